"""`healthvault audit trace FILE`: which download a leaked copy came from.

Owns reading the per-download id out of a watermarked PDF (its document information, else the visible mark's text:
vault/records/watermark.py) and printing the audit event that recorded that download: when, who (the actor's
pseudonym, resolved to the account and role by recomputing pseudonyms with the vault's key), the record, the grant
and the request id. The look-up is itself audited (`audit.read`, by the operator). It prints no PHI: no names, no
record content, no grant purpose.
Registered on the `audit` group by vault/cli/audit.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from vault.cli import cli_identity, common_options, open_or_fail

if TYPE_CHECKING:
    from vault.runtime import Vault


@click.command("trace")
@common_options
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
def trace(data_dir, passphrase_file, file) -> None:
    """Find the download a (leaked) watermarked PDF came from and print its audit event."""
    from vault.identity import RequestContext
    from vault.records import watermark

    download_id = watermark.read_download_id(Path(file).read_bytes())
    if download_id is None:
        raise click.ClickException("no download id in this file: it is not a watermarked copy from this vault")
    vault = open_or_fail(data_dir, passphrase_file)
    try:
        with vault.session() as session:
            from vault.access import audit_append

            audit_append.append(session, vault, identity=cli_identity(), ctx=RequestContext(request_id="cli-trace"),
                                action="audit.read", outcome="allow", resource_type="audit", reason="trace")
            session.commit()
            found = find_download(session, vault, download_id)
    finally:
        vault.close()
    if found is None:
        raise click.ClickException(f"download {download_id}: no audit event records it in this vault")
    for key, value in found.items():
        click.echo(f"{key:<12} {value}")


def find_download(session, vault: Vault, download_id: str) -> dict | None:
    """The download event carrying `download_id`, with the actor resolved to an account (or None)."""
    from sqlalchemy import select

    from audit.models import AuditEvent
    from vault.access import audit_append
    from vault.db.models import Account
    from vault.records import watermark

    if not watermark.DOWNLOAD_ID.match(download_id):
        return None
    suffix = f"{watermark.REASON_PREFIX}{download_id}"
    event = session.scalars(select(AuditEvent).where(AuditEvent.action == "record.download",
                                                     AuditEvent.reason.like(f"%{suffix}"))
                            .order_by(AuditEvent.occurred_at)).first()
    if event is None or not (event.reason or "").endswith(suffix):
        return None
    who = None
    for account_id, username, role in session.execute(select(Account.id, Account.username, Account.role)):
        if event.actor in audit_append.actor_pseudonyms(vault, account_id):
            who = f"{username} ({role})"
            break
    return {"download": download_id, "when": event.occurred_at.isoformat(), "who": who or "(unknown account)",
            "actor": event.actor, "role": event.actor_role, "record": event.resource_id,
            "grant": event.grant_id or "-", "via": (event.reason or "").split(" ", 1)[0],
            "outcome": event.outcome, "request": event.request_id or "-", "chain": f"{event.chain_id}:{event.seq}"}
