"""`healthvault audit export | verify | public-key | archive | checkpoint`: the audit trail from the host.

Each command that reads the trail records its own event first (`audit.export`, `audit.read` for the key); `verify`
needs no database and no secret (it runs the offline verifier, audit/verify.py) but does need the pinned key
(`--key`): an export's own public_key.txt proves nothing about who signed it.
An export is written under a hidden `.NAME.partial-*` directory and renamed into place when complete and verified, so
an export killed midway leaves no half-written NAME; the next export to NAME removes such leftovers.
Never: writes or deletes an event except through `vault.auditing.trail` (archive prunes only what it sealed).
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import click

from vault.cli import cli_identity, common_options, open_or_fail
from vault.identity import RequestContext


@click.group("audit")
def audit_group() -> None:
    """Export, verify and checkpoint the audit trail."""


def _when(value: str | None, option: str) -> dt.datetime | None:
    """An --since/--until time: ISO 8601 with an offset (as every time a client sends, vault.text)."""
    if value is None:
        return None
    from vault import text

    try:
        return text.utc_instant(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError as exc:
        raise click.BadParameter(f"an ISO 8601 time with an offset, e.g. 2026-01-31T00:00:00Z ({exc})",
                                 param_hint=option) from None


@audit_group.command("export")
@common_options
@click.option("--since", help="ISO 8601 start (inclusive); default: the beginning.")
@click.option("--until", help="ISO 8601 end (exclusive); default: now.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def audit_export(data_dir: str | None, passphrase_file: str | None, since: str | None, until: str | None,
                 out_dir: str) -> None:
    """Write a verifiable export (JSON Lines, CSV, checkpoints, public key, signed manifest)."""
    from tqdm import tqdm

    from vault.access import audit_append
    from vault.auditing import trail as audit_trail

    start, end = _when(since, "--since"), _when(until, "--until")
    vault = open_or_fail(data_dir, passphrase_file)
    out = Path(out_dir)
    for leftover in out.parent.glob(f".{out.name}.partial-*"):  # an export killed before its atomic rename
        shutil.rmtree(leftover, ignore_errors=True)
    bar = tqdm(total=0, unit="event", desc="export")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        with vault.session() as session:
            audit_append.append(session, vault, identity=cli_identity(), ctx=RequestContext(request_id="cli"),
                                action="audit.export", outcome="allow", resource_type="audit")
            session.commit()
        result = audit_trail.write_export(vault, since=start, until=end, out=Path(out_dir), progress=progress)
    finally:
        bar.close()
        vault.close()
    click.echo(f"exported {result['event_count']} events (tree size {result['tree_size']}) to {out_dir}")


KEY_HOWTO = ("Verify against the key you were handed out of band, never the one inside the export: get it from "
             "the vault's operator (`healthvault audit public-key` on the host) or, as an auditor, from "
             "GET /v1/audit/public-key, and pass it with --key VKEY (or --key FILE).")


@audit_group.command("verify")
@click.argument("export_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--key", help="Pinned verifier key (C2SP vkey string, or a file holding it). Required.")
def audit_verify(export_dir: str, key: str | None) -> None:
    """Verify an export offline against a pinned key: no database, no secret."""
    from audit import verify

    if not key:
        click.echo(f"error: --key is required. {KEY_HOWTO}", err=True)
        raise SystemExit(2)
    raise SystemExit(verify.main([export_dir, "--key", key]))


@audit_group.command("public-key")
@common_options
def audit_public_key(data_dir: str | None, passphrase_file: str | None) -> None:
    """Print the verifier key (vkey) that signs checkpoints and exports, to hand over out of band."""
    from vault.access import audit_append
    from vault.auditing import trail as audit_trail

    vault = open_or_fail(data_dir, passphrase_file)
    try:
        with vault.session() as session:
            audit_append.append(session, vault, identity=cli_identity(), ctx=RequestContext(request_id="cli"),
                                action="audit.read", outcome="allow", resource_type="audit-public-key")
            session.commit()
        key = audit_trail.public_key_of(vault)
    finally:
        vault.close()
    click.echo(key.vkey)


@audit_group.command("archive")
@common_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the sealed archive (a verifiable export of the pruned events).")
def audit_archive(data_dir: str | None, passphrase_file: str | None, out_dir: str) -> None:
    """Seal events past their retention into a verified archive, prune them, sign a tombstone checkpoint.

    On PostgreSQL run this with a database URL of the schema owner: the service's application role holds only
    INSERT and SELECT on the trail."""
    from vault.auditing import trail as audit_trail

    vault = open_or_fail(data_dir, passphrase_file)
    try:
        result = audit_trail.archive(vault, out=Path(out_dir))
    finally:
        vault.close()
    if not result["archived"]:
        click.echo("nothing is past its retention period; nothing archived")
    else:
        click.echo(f"archived and pruned {result['archived']} events below leaf {result['below_leaf']} "
                   f"(archive sha256 {result['archive_sha256']})")


@audit_group.command("checkpoint")
@common_options
def audit_checkpoint(data_dir: str | None, passphrase_file: str | None) -> None:
    """Integrate pending events and sign a checkpoint now."""
    from vault.auditing import trail as audit_trail

    vault = open_or_fail(data_dir, passphrase_file)
    try:
        made = audit_trail.checkpoint_now(vault, force=True)
    finally:
        vault.close()
    click.echo(made.note if made is not None else "nothing new to checkpoint")


def _register_trace() -> None:
    from vault.cli.trace import trace  # issue 16: `audit trace FILE`, a module of its own

    audit_group.add_command(trace)


_register_trace()
