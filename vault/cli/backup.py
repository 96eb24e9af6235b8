"""`healthvault backup --out DIR` and `healthvault restore DIR [--verify] [--force]` (COMPLIANCE BAK-1).

The composition of a backup and a restore around the mechanics of vault/db/backup.py: both are audited (a backup's
`vault.backup` event is in the backup it makes; a restore's `vault.restore` event is appended to the restored trail,
after the checks). A restore re-applies every erasure either side remembers: a patient whose KEKs the key store has
destroyed since the backup was taken is erased again at once (unreadable already, now also gone), and a patient the
data marks erased whose KEK an older key-store copy brought back loses it again. With `--verify` it then checks every
blob against the manifest and the rows, and the whole audit chain (an export verified offline against the signing
key held in the key store, not in the backup).
Never: backs up or restores the key store or the root key (docs/backup.md gives their own procedure), restores into
a running vault (stop `serve` first), or replaces a non-empty vault without --force, nor with it before the trail it
replaces is exported (DATA_DIR/exports/pre-restore-*: the events since the backup would otherwise be lost).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from vault.cli import cli_identity, common_options, load_settings, open_or_fail
from vault.identity import RequestContext

if TYPE_CHECKING:
    from vault.runtime import Vault

CTX = RequestContext(request_id="cli")


def _audit(vault: Vault, action: str, outcome: str, reason: str) -> None:
    from vault.access import audit_append

    with vault.session() as session:
        audit_append.append(session, vault, identity=cli_identity(), ctx=CTX, action=action, outcome=outcome,
                            resource_type="backup", reason=reason)
        session.commit()


@click.command("backup")
@common_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the backup (absent or empty). Never the key store's directory.")
def backup(data_dir: str | None, passphrase_file: str | None, out_dir: str) -> None:
    """Back up the database and the encrypted blobs (not the key store: see docs/backup.md)."""
    from vault.db import backup as mechanics

    vault = open_or_fail(data_dir, passphrase_file)
    try:
        try:
            mechanics.check_target(vault.settings, Path(out_dir))
        except mechanics.BackupError as exc:
            _audit(vault, "vault.backup", "error", "refused: target directory")
            raise click.ClickException(str(exc)) from exc
        _audit(vault, "vault.backup", "allow", "started")  # inside the snapshot: the backup shows it was taken
        try:
            manifest = mechanics.create(vault.settings, Path(out_dir), now=vault.clock())
        except mechanics.BackupError as exc:
            _audit(vault, "vault.backup", "error", "failed")
            raise click.ClickException(str(exc)) from exc
    finally:
        vault.close()
    size = sum(blob["size"] for blob in manifest["blobs"])
    click.echo(f"backed up the {manifest['backend']} database and {len(manifest['blobs'])} blob(s) ({size} bytes) "
               f"to {out_dir}; the key store is NOT in it (docs/backup.md)")


@click.command("restore")
@common_options
@click.argument("backup_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--verify", is_flag=True, help="After restoring, check every blob and the whole audit chain.")
@click.option("--force", is_flag=True, help="Replace the data of a vault that is not empty.")
def restore(data_dir: str | None, passphrase_file: str | None, backup_dir: str, verify: bool, force: bool) -> None:
    """Restore a backup into this vault (stop the service first); the key store stays as it is."""
    from vault.db import backup as mechanics

    settings = load_settings(data_dir)
    src = Path(backup_dir)
    try:
        manifest = mechanics.read_manifest(src)
    except mechanics.BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    current = open_or_fail(data_dir, passphrase_file)  # the root key and key store open before anything is replaced
    kept_trail = None
    try:
        if force and not mechanics.is_empty(settings):
            kept_trail = _keep_replaced_trail(current)
    finally:
        current.close()
    try:
        result = mechanics.restore(settings, src, manifest=manifest, force=force)
    except mechanics.BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    vault = open_or_fail(data_dir, passphrase_file)  # migrates a backup of an older schema to this version
    try:
        reapplied = _reapply_erasures(vault)
        problems = [f"record {r} has no blob in the backup" for r in result.rows_without_blob]
        if verify:
            problems += mechanics.verify_restored(vault.settings, manifest) + _keyless_patients(vault)
            problems += _verify_chain(vault)
        reason = (f"backup-created={manifest['created_at'][:19]} blobs={result.blobs_restored} "
                  f"erasures-reapplied={reapplied} verified={'yes' if verify and not problems else 'no'}")
        _audit(vault, "vault.restore", "error" if problems else "allow", reason)
    finally:
        vault.close()
    for problem in problems[:20]:
        click.echo(f"problem: {problem}", err=True)
    if problems:
        raise click.ClickException(f"the restored vault has {len(problems)} problem(s)")
    if kept_trail is not None:
        click.echo(f"the replaced vault's audit trail was exported to {kept_trail} first")
    click.echo(f"restored {result.blobs_restored} blob(s) and the {manifest['backend']} database from {backup_dir} "
               f"({result.orphans_skipped} orphan blob(s) skipped, {reapplied} erasure(s) re-applied)"
               + ("; blobs and audit chain verified" if verify else ""))


def _keep_replaced_trail(vault: Vault) -> Path:
    """A verified export of the trail a forced restore is about to replace: its events since the backup would
    otherwise be lost with the database (docs/backup.md)."""
    import datetime as dt

    from vault.auditing import trail

    out = vault.settings.data_dir / "exports" / f"pre-restore-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%fZ}"
    try:
        trail.write_export(vault, since=None, until=None, out=out)
    except Exception as exc:
        raise click.ClickException(f"could not export the audit trail it would replace ({type(exc).__name__}); "
                                   "nothing was changed") from exc
    return out


def _reapply_erasures(vault: Vault) -> int:
    """Finish every erasure one side remembers; returns how many were re-applied. Both directions: a restored
    patient whose keys the key store has destroyed (a data backup older than the erasure), and a patient the data
    marks erased whose KEK is back (a key store restored from a copy older than the erasure, docs/backup.md)."""
    from sqlalchemy import select

    from vault.db.models import Patient
    from vault.patients import erasure

    with vault.session() as session:
        patients = list(session.execute(select(Patient.id, Patient.erased_at)))
    count = 0
    for patient_id, erased_at in patients:
        if vault.keystore.is_destroyed(patient_id) or (erased_at is not None
                                                       and vault.keys.patient_key_exists(patient_id)):
            with vault.session() as session:
                report = erasure.erase_by_operator(session, vault, patient_id=patient_id, actor=cli_identity(),
                                                   ctx=CTX)
            count += not report.already_erased
    return count


def _keyless_patients(vault: Vault) -> list[str]:
    """Patients the key store knows nothing of (no KEK, no tombstone): the wrong key store was configured."""
    from sqlalchemy import select

    from vault.db.models import Patient

    with vault.session() as session:
        patient_ids = list(session.scalars(select(Patient.id).where(Patient.erased_at.is_(None))))
    missing = [p for p in patient_ids if not vault.keys.patient_key_exists(p) and not vault.keystore.is_destroyed(p)]
    return [f"{len(missing)} patient(s) have no key in this key store: is it the right one?"] if missing else []


def _verify_chain(vault: Vault) -> list[str]:
    """The whole trail exported and verified offline, against the signing key from the key store."""
    from audit.verify import verify_bundle
    from vault.auditing import trail

    scratch = Path(tempfile.mkdtemp(prefix=".restore-verify-", dir=vault.settings.data_dir))
    try:
        trail.write_export(vault, since=None, until=None, out=scratch / "export")
        report = verify_bundle(scratch / "export", trail.signer(vault).vkey())
    except Exception as exc:  # noqa: BLE001 - a chain that cannot even be exported is a failed verification
        return [f"audit chain: {type(exc).__name__}: {exc}"[:300]]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [f"audit chain: {p}" for p in report.problems[:5]]
