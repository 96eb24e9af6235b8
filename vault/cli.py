"""The `healthvault` command line: init, serve, users.

Owns operator interaction. Secrets are never taken as command-line arguments (they would show in `ps` and shell
history): the root-key passphrase comes from $HEALTHVAULT_PASSPHRASE or --passphrase-file, and a prompt is used only
when neither is given and a terminal is attached, so scripts and CI never hang.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path

import click

from kms import KeyStoreError
from vault import accounts
from vault.errors import VaultError
from vault.identity import RequestContext
from vault.models import STAFF_ROLES
from ocr.cli import ocr_command
from vault.settings import Settings

PASSPHRASE_ENV = "HEALTHVAULT_PASSPHRASE"


def _read_secret_file(path: str) -> bytes:
    data = Path(path).read_bytes()
    return data[:-1] if data.endswith(b"\n") else data


def _passphrase(passphrase_file: str | None, *, confirm: bool = False) -> bytes | None:
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env.encode()
    if passphrase_file:
        return _read_secret_file(passphrase_file)
    if os.environ.get("HEALTHVAULT_ROOT_KEY"):
        return None
    if not sys.stdin.isatty():
        raise click.UsageError(f"no passphrase: set {PASSPHRASE_ENV} or pass --passphrase-file")
    return click.prompt("Root key passphrase", hide_input=True, confirmation_prompt=confirm).encode()


def _common(fn):
    fn = click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True),
                      help="File holding the root-key passphrase.")(fn)
    fn = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                      help="Data directory (default: $HEALTHVAULT_DATA_DIR, else ./var).")(fn)
    return fn


def _settings(data_dir) -> Settings:
    try:
        return Settings.load(data_dir)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def _open(data_dir, passphrase_file):
    from vault.runtime import open_vault

    settings = _settings(data_dir)
    try:
        return open_vault(settings, _passphrase(passphrase_file))
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def main() -> None:
    """Health Vault: encrypted, consent-gated, audited health records."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")


@main.command()
@_common
def init(data_dir, passphrase_file) -> None:
    """Create the data directory, the sealed root key and the databases."""
    from vault.runtime import init_data_dir, open_vault

    settings = _settings(data_dir)
    fresh = not settings.root_key_path.exists()
    try:
        init_data_dir(settings, _passphrase(passphrase_file, confirm=True) if fresh else _passphrase(passphrase_file))
        vault = open_vault(settings, _passphrase(passphrase_file))
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    vault.close()
    click.echo(f"Vault ready in {settings.data_dir}")
    click.echo("No account exists yet. Create the three separated administrators, each with their own password:")
    for role in ("sysadmin", "secadmin", "auditadmin"):
        click.echo(f"  healthvault users add --data-dir {settings.data_dir} --role {role} --username <name>")
    click.echo(f"Then start the service:  healthvault serve --data-dir {settings.data_dir}")


main.add_command(ocr_command, "ocr")


@main.group()
def users() -> None:
    """Manage staff accounts."""


@users.command("add")
@_common
@click.option("--role", type=click.Choice(STAFF_ROLES), required=True)
@click.option("--username", required=True)
@click.option("--password-file", type=click.Path(dir_okay=False, exists=True),
              help="File holding the new account's initial password (else $HEALTHVAULT_NEW_PASSWORD, else a prompt).")
def users_add(data_dir, passphrase_file, role, username, password_file) -> None:
    """Create a staff account (the password must be changed at first sign-in)."""
    if password_file:
        password = _read_secret_file(password_file).decode()
    elif os.environ.get("HEALTHVAULT_NEW_PASSWORD"):
        password = os.environ["HEALTHVAULT_NEW_PASSWORD"]
    elif sys.stdin.isatty():
        password = click.prompt("Initial password", hide_input=True, confirmation_prompt=True)
    else:
        raise click.UsageError("no password: pass --password-file or set HEALTHVAULT_NEW_PASSWORD")
    vault = _open(data_dir, passphrase_file)
    try:
        with vault.session() as session:
            account = accounts.create(session, vault, username=username, password=password, role=role,
                                      ctx=RequestContext(request_id="cli"), created_by=_cli_identity(),
                                      must_change_password=True)
    except VaultError as exc:
        raise click.ClickException(exc.detail) from exc
    finally:
        vault.close()
    click.echo(f"created {role} account {account.username} ({account.id})")


@main.group("audit")
def audit_group() -> None:
    """Export, verify and checkpoint the audit trail."""


def _when(value: str | None):
    if value is None:
        return None
    import datetime as dt

    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


@audit_group.command("export")
@_common
@click.option("--since", help="ISO 8601 start (inclusive); default: the beginning.")
@click.option("--until", help="ISO 8601 end (exclusive); default: now.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def audit_export(data_dir, passphrase_file, since, until, out_dir) -> None:
    """Write a verifiable export (JSON Lines, CSV, checkpoints, public key, signed manifest)."""
    from tqdm import tqdm

    from vault import audit_trail

    vault = _open(data_dir, passphrase_file)
    bar = tqdm(total=0, unit="event", desc="export")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        with vault.session() as session:
            from vault import audit_log

            audit_log.append(session, vault, identity=_cli_identity(), ctx=RequestContext(request_id="cli"),
                             action="audit.export", outcome="allow", resource_type="audit")
            session.commit()
        result = audit_trail.write_export(vault, since=_when(since), until=_when(until), out=Path(out_dir),
                                          progress=progress)
    finally:
        bar.close()
        vault.close()
    click.echo(f"exported {result['event_count']} events (tree size {result['tree_size']}) to {out_dir}")


@audit_group.command("verify")
@click.argument("export_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--key", help="Pinned verifier key (C2SP vkey string, or a file holding it).")
def audit_verify(export_dir, key) -> None:
    """Verify an export offline: no database, no secret."""
    from audit import verify

    raise SystemExit(verify.main([export_dir, *(["--key", key] if key else [])]))


@audit_group.command("archive")
@_common
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the sealed archive (a verifiable export of the pruned events).")
def audit_archive(data_dir, passphrase_file, out_dir) -> None:
    """Seal events past their retention into a verified archive, prune them, sign a tombstone checkpoint.

    On PostgreSQL run this with a database URL of the schema owner: the service's application role holds only
    INSERT and SELECT on the trail."""
    from vault import audit_trail

    vault = _open(data_dir, passphrase_file)
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
@_common
def audit_checkpoint(data_dir, passphrase_file) -> None:
    """Integrate pending events and sign a checkpoint now."""
    from vault import audit_trail

    vault = _open(data_dir, passphrase_file)
    try:
        made = audit_trail.checkpoint_now(vault, force=True)
    finally:
        vault.close()
    click.echo(made.note)


def _cli_identity():
    from vault.identity import Identity

    return Identity(account_id="cli:" + (os.environ.get("USER") or "operator"), role="operator")


@users.command("disable-idle")
@_common
def users_disable_idle(data_dir, passphrase_file) -> None:
    """Disable staff accounts unused for 90 days (run daily, e.g. from cron)."""
    vault = _open(data_dir, passphrase_file)
    try:
        with vault.session() as session:
            names = accounts.disable_idle_staff(session, vault, ctx=RequestContext(request_id="cli"))
    finally:
        vault.close()
    click.echo(f"disabled {len(names)} idle staff account(s)" + (": " + ", ".join(names) if names else ""))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@main.command()
@_common
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True))
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True))
def serve(data_dir, passphrase_file, host, port, tls_cert, tls_key) -> None:
    """Run the HTTP API (TLS is required on any non-loopback address)."""
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if not tls_cert and not _is_loopback(host):
        raise click.UsageError(f"refusing to serve on {host} without TLS: pass --tls-cert and --tls-key")
    import uvicorn

    from api.app import create_app

    from vault import logsetup
    from vault.audit_trail import Checkpointer

    vault = _open(data_dir, passphrase_file)
    log_listener = logsetup.configure(vault.settings)
    app = create_app(vault)
    checkpointer = Checkpointer(vault)
    checkpointer.start()
    click.echo(f"serving on {'https' if tls_cert else 'http'}://{host}:{port}")
    try:
        uvicorn.run(app, host=host, port=port, ssl_certfile=tls_cert, ssl_keyfile=tls_key, access_log=False,
                    log_config=None, log_level="info", server_header=False)
    finally:
        checkpointer.stop()
        vault.close()
        log_listener.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
