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
from ocr.cli import ocr_command
from vault.accounts import service as accounts
from vault.db.models import STAFF_ROLES
from vault.errors import VaultError
from vault.identity import RequestContext
from vault.profile import ProductionRefused
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
    if os.environ.get("HEALTHVAULT_ROOT_KEY") or os.environ.get("HEALTHVAULT_KMS_PROVIDER") == "pkcs11":
        return None  # a development key, or the root key is in a token (its PIN: vault.runtime, env or file)
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
    except (KeyStoreError, ProductionRefused) as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def main() -> None:
    """Health Vault: encrypted, consent-gated, audited health records."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter drowns what the operator asked for


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
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@audit_group.command("export")
@_common
@click.option("--since", help="ISO 8601 start (inclusive); default: the beginning.")
@click.option("--until", help="ISO 8601 end (exclusive); default: now.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
def audit_export(data_dir, passphrase_file, since, until, out_dir) -> None:
    """Write a verifiable export (JSON Lines, CSV, checkpoints, public key, signed manifest)."""
    from tqdm import tqdm

    from vault.auditing import trail as audit_trail

    vault = _open(data_dir, passphrase_file)
    bar = tqdm(total=0, unit="event", desc="export")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        with vault.session() as session:
            from vault.access import audit_append

            audit_append.append(session, vault, identity=_cli_identity(), ctx=RequestContext(request_id="cli"),
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
    from vault.auditing import trail as audit_trail

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
    from vault.auditing import trail as audit_trail

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


@main.group("patients")
def patients_group() -> None:
    """Patient data operations run by an operator on the host."""


@patients_group.command("erase")
@_common
@click.argument("patient_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (erasure cannot be undone).")
def patients_erase(data_dir, passphrase_file, patient_id, yes) -> None:
    """Erase a patient by crypto-shredding (PIPL art. 47): destroy their KEKs, blind indexes, records and blobs.

    Audited with the patient's pseudonym only. Running it again finishes an interrupted erasure."""
    from vault.patients import erasure

    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("erasure cannot be undone: pass --yes to confirm")
        click.confirm(f"Erase patient {patient_id} for good?", abort=True)
    vault = _open(data_dir, passphrase_file)
    try:
        with vault.session() as session:
            report = erasure.erase_by_operator(session, vault, patient_id=patient_id, actor=_cli_identity(),
                                               ctx=RequestContext(request_id="cli"))
    except VaultError as exc:
        raise click.ClickException(exc.detail) from exc
    except KeyStoreError as exc:
        raise click.ClickException(f"{exc} (nothing was erased unless the patient is marked erased: run again)") \
            from exc
    finally:
        vault.close()
    if report.already_erased:
        click.echo(f"patient {report.patient_pseudonym} was already erased")
    else:
        click.echo(f"erased patient {report.patient_pseudonym}: {report.key_versions_destroyed} key version(s) "
                   f"destroyed, {report.records_deleted} record(s) and {report.grants_revoked} grant(s) removed")


@main.group("keys")
def keys_group() -> None:
    """Rotate, rewrap, retire and inspect keys (root -> patient KEK -> record DEK). See docs/key-rotation.md."""


def _keys_status_text(status) -> list[str]:
    from kms import suites

    lines = [f"provider {status.provider}, suite {suites.name_of(status.suite)} (id {status.suite}) for new keys, "
             f"current root version {status.current_root_version}",
             "root versions:"]
    for r in status.root_versions:
        lines.append(f"  v{r.version}{' (current)' if r.current else ''}: wraps {r.patient_keks} patient KEK(s), "
                     f"{r.service_keys} service key(s)")
    lines.append("patient KEK versions:")
    for k in status.kek_versions:
        lines.append(f"  v{k.version}: {k.keks} patient(s), wraps {k.deks} DEK(s)")
    lines.append(f"waiting for rewrap: {status.keks_under_old_root} KEK(s) and {status.service_keys_under_old_root} "
                 f"service key(s) under an old root, {status.deks_under_old_kek} DEK(s) under an old KEK")
    if status.deks_unreadable:
        lines.append(f"UNREADABLE wrapped DEKs (integrity problem): {status.deks_unreadable}")
    lines.append(f"root rotation requests open: {status.pending_rotations}")
    job = status.rewrap_job
    if job is not None:
        lines.append(f"last rewrap job {job.job_id}: {job.status}, phase {job.phase}, {job.scanned}/{job.total} "
                     f"looked at, {job.rewrapped} rewrapped, {job.failed} failed")
    return lines


@keys_group.command("status")
@_common
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
def keys_status(data_dir, passphrase_file, as_json) -> None:
    """Root and KEK versions, what each wraps, and what still waits for a rewrap."""
    import dataclasses
    import json

    from vault.access import audit_append
    from vault.keys import operations as keyops

    vault = _open(data_dir, passphrase_file)
    try:
        status = keyops.compute_status(vault)
        with vault.session() as session:
            audit_append.append(session, vault, identity=_cli_identity(), ctx=RequestContext(request_id="cli"),
                             action="key.status", outcome="allow", resource_type="keys")
            session.commit()
    finally:
        vault.close()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(status), default=str, indent=2))
    else:
        click.echo("\n".join(_keys_status_text(status)))


@keys_group.command("rotate")
@_common
@click.option("--root", "root", is_flag=True, help="A new root version (two-person rule in production).")
@click.option("--kek", "patient_id", metavar="PATIENT", help="A new KEK version for one patient.")
@click.option("--all-keks", "all_keks", is_flag=True, help="A new KEK version for every patient.")
def keys_rotate(data_dir, passphrase_file, root, patient_id, all_keks) -> None:
    """Make a new key version; everything wrapped from now on uses it. Old wraps keep opening until rewrapped."""
    if sum((bool(root), bool(patient_id), bool(all_keks))) != 1:
        raise click.UsageError("give exactly one of --root, --kek PATIENT, --all-keks")
    from vault.keys import operations as keyops

    ctx = RequestContext(request_id="cli")
    vault = _open(data_dir, passphrase_file)
    try:
        if root:
            if vault.settings.profile != "production":
                click.echo("warning: development profile: a root rotation without a second secadmin's approval "
                           "(the production profile refuses this; see POST /v1/keys/rotations)", err=True)
            view = keyops.rotate_root_cli(vault, identity=_cli_identity(), ctx=ctx)
            click.echo(f"root key rotated: version {view.new_version} is current (request {view.request_id}); "
                       "run `healthvault keys rewrap` to move old wraps")
        elif patient_id:
            version = keyops.rotate_kek(vault, patient_id=patient_id, identity=_cli_identity(), ctx=ctx)
            click.echo(f"patient KEK rotated: version {version}; run `healthvault keys rewrap` to move old DEKs")
        else:
            from tqdm import tqdm

            with tqdm(unit="patient", desc="rotate KEKs") as bar:
                count = keyops.rotate_all_keks(vault, identity=_cli_identity(), ctx=ctx, progress=bar.update)
            click.echo(f"rotated the KEK of {count} patient(s); run `healthvault keys rewrap` to move old DEKs")
    except keyops.TwoPersonRuleRefused as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        vault.close()


@keys_group.command("rewrap")
@_common
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 50_000))
@click.option("--pause-ms", default=0, show_default=True, type=click.IntRange(0, 60_000),
              help="Sleep between batches to leave room for the live service.")
@click.option("--retire", "then_retire", is_flag=True, help="Retire unreferenced old versions afterwards.")
@click.option("--grace-seconds", default=3600, show_default=True, type=click.IntRange(0, None),
              help="With --retire: keep old versions this long after the newest was created.")
def keys_rewrap(data_dir, passphrase_file, batch_size, pause_ms, then_retire, grace_seconds) -> None:
    """Move every wrapped key to the newest version (resumes an interrupted run; safe to repeat)."""
    from tqdm import tqdm

    from vault.keys import operations as keyops

    ctx = RequestContext(request_id="cli")
    vault = _open(data_dir, passphrase_file)
    bar = tqdm(total=0, unit="key", desc="rewrap")

    def progress(view) -> None:
        bar.total = view.total
        bar.n = view.scanned
        bar.set_postfix_str(f"{view.phase} rewrapped={view.rewrapped} failed={view.failed}", refresh=False)
        bar.refresh()

    try:
        job = keyops.rewrap(vault, identity=_cli_identity(), ctx=ctx, batch_size=batch_size, progress=progress,
                            pause_seconds=pause_ms / 1000)
        bar.close()
        click.echo(f"rewrap job {job.job_id} done: {job.scanned} key(s) looked at, {job.rewrapped} rewrapped, "
                   f"{job.failed} failed")
        if then_retire:
            _echo_retired(keyops.retire(vault, identity=_cli_identity(), ctx=ctx, grace_seconds=grace_seconds))
    except keyops.RewrapTakenOver as exc:
        raise click.ClickException("another rewrap run took this job over; this one stopped") from exc
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        bar.close()
        vault.close()
    if job.failed:
        raise click.ClickException(f"{job.failed} wrapped key(s) did not open (audited as key.unwrap_failed); "
                                   "their versions are kept")


def _echo_retired(result) -> None:
    click.echo(f"retired root version(s): {', '.join(map(str, result.root_versions)) or 'none'}; "
               f"retired {result.kek_versions} old patient KEK version(s)")
    for reason in result.refused:
        click.echo(f"kept: {reason}")


@keys_group.command("retire")
@_common
@click.option("--grace-seconds", default=3600, show_default=True, type=click.IntRange(0, None),
              help="Keep old versions this long after the newest was created (in-flight uploads).")
def keys_retire(data_dir, passphrase_file, grace_seconds) -> None:
    """Destroy old root and KEK versions that nothing references any more (refuses the rest, saying why)."""
    from vault.keys import operations as keyops

    vault = _open(data_dir, passphrase_file)
    try:
        _echo_retired(keyops.retire(vault, identity=_cli_identity(), ctx=RequestContext(request_id="cli"),
                                    grace_seconds=grace_seconds))
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        vault.close()


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
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes on one socket (PostgreSQL only; vault/cli/multiserve.py).")
def serve(data_dir, passphrase_file, host, port, tls_cert, tls_key, workers) -> None:
    """Run the HTTP API (TLS is required on any non-loopback address)."""
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if not tls_cert and not _is_loopback(host):
        raise click.UsageError(f"refusing to serve on {host} without TLS: pass --tls-cert and --tls-key")
    from vault import profile

    settings = _settings(data_dir)
    try:  # every refusal at once, before the key is opened: settings and transport
        profile.refuse_unless_ready(profile.settings_checks(settings)
                                    + profile.serving_checks(settings, host=host, tls=bool(tls_cert)), settings)
    except ProductionRefused as exc:
        raise click.ClickException(str(exc)) from exc
    import uvicorn

    from api.app import create_app
    from vault import keystate, logsetup
    from vault.auditing.trail import Checkpointer

    vault = _open(data_dir, passphrase_file)
    if workers > 1:  # the key opened and the schema migrated once, here; then one vault per server process
        vault.close()
        from vault.cli.multiserve import serve_workers

        return serve_workers(settings=settings, passphrase=_passphrase(passphrase_file), host=host, port=port,
                             tls_cert=tls_cert, tls_key=tls_key, workers=workers)
    log_listener = logsetup.configure(vault.settings)
    app = create_app(vault)
    checkpointer = Checkpointer(vault)
    checkpointer.start()
    watcher = keystate.watch(vault)  # several `serve` processes on one database drop erased keys together
    settle_heap()
    click.echo(f"serving on {'https' if tls_cert else 'http'}://{host}:{port}")
    try:
        uvicorn.run(app, host=host, port=port, ssl_certfile=tls_cert, ssl_keyfile=tls_key, access_log=False,
                    log_config=None, log_level="info", server_header=False)
    finally:
        watcher.stop()
        checkpointer.stop()
        vault.close()
        log_listener.stop()


# The young generation is collected after this many net container allocations instead of CPython's 700.
GC_GEN0_THRESHOLD = 10_000


def settle_heap() -> None:
    """Keep the cyclic garbage collector off the start-up heap and out of most requests.

    What start-up allocated (FastAPI, SQLAlchemy, pydantic, Casbin, the OCR models) lives as long as the process, yet
    every older-generation collection walked all of it again: under bench/bench_http.py's load a full collection took
    ~160 ms with every thread stopped, and collections took ~7 % of the server's time. `gc.freeze()` moves the
    start-up heap out of the collector's sight; the higher gen-0 threshold lets a request's short-lived containers die
    by reference count before a collection looks at them. Together: ~25 % more record reads/s and a p99 about half as
    long (docs/performance.md). Reference cycles are still collected."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Data directory (default: $HEALTHVAULT_DATA_DIR, else ./var).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
def doctor(data_dir, as_json) -> None:
    """Print what this deployment still lacks for MLPS level 3 and 密评 (exit 1 if anything is lacking).

    Needs no passphrase or PIN: it reads the settings and, when it exists, the data database (never a key).
    """
    import datetime as dt
    import json

    from vault import profile
    from vault.db import engine as db

    settings = _settings(data_dir)
    engine = None
    factory = None
    if settings.is_sqlite and not (settings.data_dir / "vault.db").exists():
        pass  # not initialised yet: settings checks only
    else:
        engine = db.make_engine(settings.database_url)
        factory = db.make_sessionmaker(engine)
    try:
        try:
            checks = profile.run_all(settings, session_factory=factory, now=dt.datetime.now(dt.UTC))
        except Exception as exc:  # an unreachable or uninitialised database is itself a finding
            checks = profile.run_all(settings) + [profile.Check(
                id="database-reachable", rows="BAK-1", scope="mlps", ok=False,
                message=f"the data database could not be read ({type(exc).__name__}): run `healthvault init`")]
    finally:
        if engine is not None:
            engine.dispose()
    lacking = [c for c in checks if not c.ok]
    if as_json:
        click.echo(json.dumps({"profile": settings.profile, "kms_provider": settings.kms_provider,
                               "crypto_suite": settings.crypto_suite, "lacking": len(lacking),
                               "checks": [c.as_dict() for c in checks]}, ensure_ascii=False, indent=2))
    else:
        click.echo(f"healthvault doctor: profile={settings.profile} kms_provider={settings.kms_provider} "
                   f"crypto_suite={settings.crypto_suite}")
        for c in checks:
            mark = "ok    " if c.ok else ("REFUSE" if c.refuse and settings.profile == "production" else "LACKS ")
            click.echo(f"  [{mark}] {c.rows:<8} {c.scope:<9} {c.message}")
        mlps = sum(1 for c in lacking if "mlps" in c.scope)
        miping = sum(1 for c in lacking if "密评" in c.scope)
        click.echo(f"{len(lacking)} lacking: {mlps} for MLPS level 3, {miping} for 密评 (GB/T 39786)")
    sys.exit(1 if lacking else 0)


from vault.cli import worker as _worker  # noqa: E402, F401  (registers `healthvault worker`; issue 17)

if __name__ == "__main__":  # pragma: no cover
    main()
