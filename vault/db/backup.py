"""Backup and restore of a vault's data: the database and the encrypted blobs (COMPLIANCE BAK-1; docs/backup.md).

Owns the mechanics: a consistent copy of the data database (SQLite's online backup API on the embedded default,
`pg_dump` of the data schema on PostgreSQL), a copy of every blob file (ciphertext only), and a manifest naming each
copied file with its size and SHA-256; restoring them into an empty vault (or, when forced, over one) and checking the
restored blobs against that manifest and against the restored record rows.
Never: copies the key store or the root key (they have their own procedure; a data backup that carried them would
undo crypto-shredding), decrypts anything, overwrites a non-empty vault unless told to, or imports a vault domain
(the audit of a restore, the chain check and re-applying erasures are the CLI's: vault/cli/backup.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, inspect, make_url, select, text

from vault.db.models import Account, Patient, Record
from vault.settings import Settings

BACKUP_FORMAT = 1
MANIFEST = "manifest.json"
SQLITE_FILE = "vault.db"
PG_FILE = "vault.pgdump"
BLOB_DIR = "blobs"
CHUNK = 1 << 20
RUN_TIMEOUT = 6 * 3600  # seconds for one pg_dump or pg_restore


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why and what to do (no secret, no PHI in it)."""


@dataclasses.dataclass(frozen=True)
class RestoreResult:
    blobs_restored: int
    orphans_skipped: int  # blob files in the backup without a record row (an upload racing the snapshot)
    rows_without_blob: list[str]  # record ids whose blob is not in the backup (deleted while it was taken)


def _sha256_file(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _copy_hashed(source: Path, target: Path) -> tuple[int, str]:
    """Copy through a temp name (fsynced, then renamed), hashing the bytes written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest, size = hashlib.sha256(), 0
    with open(source, "rb") as src, open(partial, "wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(partial, target)
    return size, digest.hexdigest()


def _blob_files(root: Path) -> dict[str, Path]:
    """Blob id -> file, for every committed blob under a blob directory (temp files excluded)."""
    if not root.is_dir():
        return {}
    return {path.stem: path for path in sorted(root.glob("??/*.hvb"))}


def backend_of(settings: Settings) -> str:
    return "sqlite" if settings.is_sqlite else "postgresql"


def sqlite_path(settings: Settings) -> Path:
    path = settings.database_url.split("///", 1)[-1].split("?", 1)[0]
    if not path or path == ":memory:":
        raise BackupError("an in-memory database cannot be backed up")
    return Path(path)


def _pg_target(settings: Settings) -> tuple[str, dict[str, str], str]:
    """(libpq URI without the password, environment holding it, the data schema) for pg_dump / pg_restore."""
    url = make_url(settings.database_url)
    raw = url.query.get("options", "")
    options = " ".join(raw) if isinstance(raw, tuple) else raw
    schema = "public"
    for part in options.split():
        if part.startswith("-csearch_path="):
            schema = part.split("=", 1)[1].split(",")[0].strip() or "public"
    if settings.keystore_schema == schema and _same_server(settings.keystore_url, settings.database_url):
        raise BackupError(f"the data schema {schema} is also the key store's: refusing (keys are never backed up "
                          "with the data)")
    env = {**os.environ}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
        raise BackupError("the data schema's name must be a plain identifier")
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env, schema


def _same_server(a: str, b: str) -> bool:
    left, right = make_url(a), make_url(b)
    return (left.host, left.port, left.database) == (right.host, right.port, right.database)


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    try:  # an argv list (pg_dump or pg_restore), never a shell
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,  # noqa: S603
                              check=False)
    except FileNotFoundError:
        raise BackupError(f"{command[0]} not found: install the PostgreSQL client tools (Debian: postgresql-client)") \
            from None
    except subprocess.TimeoutExpired:
        raise BackupError(f"{what} did not finish in {RUN_TIMEOUT} s") from None
    if done.returncode != 0:
        raise BackupError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")


# ---- backup ---------------------------------------------------------------------------------------------------------

def check_target(settings: Settings, out: Path) -> None:
    """Raise BackupError unless `out` may receive a backup: absent or empty, and not in the key store's directory."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"refusing to write a backup into non-empty {out}")
    keys_dir = (settings.data_dir / "keys").resolve()
    if out.resolve().is_relative_to(keys_dir):
        raise BackupError("a backup never goes into the key store's directory")


def create(settings: Settings, out: Path, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """Write a backup of the data database and the blobs into `out` (absent or empty); returns the manifest.

    The database is copied first (a consistent snapshot), then the blobs. The manifest is written last, through a
    temp name: a directory without manifest.json is an interrupted backup and `restore` refuses it."""
    out = Path(out)
    check_target(settings, out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    backend = backend_of(settings)
    if backend == "sqlite":
        database = {"file": SQLITE_FILE, **_sqlite_backup(settings, out / SQLITE_FILE)}
    else:
        uri, env, schema = _pg_target(settings)
        _run(["pg_dump", "--format=custom", f"--schema={schema}", "--no-owner", f"--file={out / PG_FILE}", uri],
             env, "pg_dump")
        os.chmod(out / PG_FILE, 0o600)
        size, sha = _sha256_file(out / PG_FILE)
        database = {"file": PG_FILE, "schema": schema, "size": size, "sha256": sha}
    blobs = []
    for blob_id, path in _blob_files(settings.blob_dir).items():
        try:
            size, sha = _copy_hashed(path, out / BLOB_DIR / blob_id[:2] / path.name)
        except FileNotFoundError:
            continue  # deleted (record removed or erased) after the database snapshot: nothing to keep
        blobs.append({"id": blob_id, "size": size, "sha256": sha})
    manifest = {"format": BACKUP_FORMAT, "backend": backend, "created_at": (now or dt.datetime.now(dt.UTC)).isoformat(),
                "database": database, "blobs": blobs, "key_store": "not included (docs/backup.md)"}
    partial = out / (MANIFEST + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, out / MANIFEST)
    return manifest


def _sqlite_backup(settings: Settings, target: Path) -> dict[str, Any]:
    source_path = sqlite_path(settings)
    if not source_path.exists():
        raise BackupError(f"no database at {source_path}: nothing to back up")
    source = sqlite3.connect(source_path, timeout=30)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)  # the online backup API: a consistent snapshot while the service keeps writing
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file (no -wal beside it)
        if copy.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise BackupError("the database copy does not pass SQLite's quick_check")
    finally:
        copy.close()
        source.close()
    os.chmod(target, 0o600)
    size, sha = _sha256_file(target)
    return {"size": size, "sha256": sha}


# ---- restore --------------------------------------------------------------------------------------------------------

def read_manifest(src: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((Path(src) / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{src} has no {MANIFEST}: not a backup, or an interrupted one") from None
    except (ValueError, UnicodeError) as exc:
        raise BackupError(f"{MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BACKUP_FORMAT:
        raise BackupError(f"unknown backup format (this vault reads format {BACKUP_FORMAT})")
    return manifest


def check_backup(src: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems with the backup itself: the database file and every blob against the manifest (sizes, SHA-256)."""
    problems = []
    database = manifest["database"]
    path = Path(src) / database["file"]
    if not path.is_file():
        problems.append(f"database file {database['file']} is missing")
    elif _sha256_file(path) != (database["size"], database["sha256"]):
        problems.append(f"database file {database['file']} does not match the manifest")
    for blob in manifest["blobs"]:
        path = Path(src) / BLOB_DIR / blob["id"][:2] / f"{blob['id']}.hvb"
        if not path.is_file():
            problems.append(f"blob {blob['id']} is missing from the backup")
        elif _sha256_file(path) != (blob["size"], blob["sha256"]):
            problems.append(f"blob {blob['id']} does not match the manifest (size or SHA-256)")
    return problems


def _data_engine(settings: Settings) -> Engine:
    return create_engine(settings.database_url, hide_parameters=True)


def is_empty(settings: Settings) -> bool:
    """No account, patient or record row and no blob file: nothing a restore would destroy."""
    if _blob_files(settings.blob_dir):
        return False
    if settings.is_sqlite and not sqlite_path(settings).exists():
        return True
    engine = _data_engine(settings)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            for model in (Account, Patient, Record):
                if model.__tablename__ in tables and conn.execute(select(model.__table__).limit(1)).first():
                    return False
    finally:
        engine.dispose()
    return True


def restore(settings: Settings, src: Path, *, manifest: dict[str, Any], force: bool = False) -> RestoreResult:
    """Replace the vault's database and blobs with the backup's. The vault must not be running (stop `serve`).

    Refuses a non-empty vault unless `force`, a backup of the other backend, and a backup whose files do not match
    its manifest (checked before anything is touched)."""
    if manifest["backend"] != backend_of(settings):
        raise BackupError(f"this is a {manifest['backend']} backup; the vault runs on {backend_of(settings)}")
    problems = check_backup(src, manifest)
    if problems:
        raise BackupError(f"the backup is damaged: {problems[0]} ({len(problems)} problem(s)); nothing was changed")
    if not force and not is_empty(settings):
        raise BackupError("the vault is not empty: restoring would replace its data (pass --force to do so)")
    if manifest["backend"] == "sqlite":
        _restore_sqlite(settings, Path(src) / SQLITE_FILE)
    else:
        _restore_pg(settings, Path(src) / PG_FILE, manifest["database"]["schema"])
    return _restore_blobs(settings, src, manifest)


def _restore_sqlite(settings: Settings, source: Path) -> None:
    target = sqlite_path(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(target.name + ".restoring")
    shutil.copyfile(source, staged)
    os.chmod(staged, 0o600)
    try:
        check = sqlite3.connect(staged)
        try:
            verdict = check.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            check.close()
    except sqlite3.DatabaseError as exc:
        verdict = str(exc)
    if verdict != "ok":
        staged.unlink(missing_ok=True)
        raise BackupError(f"the backup's database fails SQLite's quick_check ({verdict[:100]}); nothing was changed")
    # The old database's WAL must go before the new file takes its name: replayed onto it, it would corrupt it.
    for suffix in ("-wal", "-shm", "-journal"):
        target.with_name(target.name + suffix).unlink(missing_ok=True)
    os.replace(staged, target)


def _restore_pg(settings: Settings, dump: Path, schema: str) -> None:
    uri, env, target_schema = _pg_target(settings)
    if target_schema != schema:
        raise BackupError(f"the backup holds schema {schema}; the vault is configured for {target_schema}")
    # The schema being replaced is set aside, not dropped, until pg_restore has succeeded: a failed restore puts it
    # back as it was.
    aside = f"{schema[:40]}_replaced_{secrets.token_hex(4)}"
    engine = create_engine(settings.database_url, isolation_level="AUTOCOMMIT", hide_parameters=True)
    try:
        with engine.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}).first()
            if exists:
                conn.execute(text(f'ALTER SCHEMA "{schema}" RENAME TO "{aside}"'))
        try:
            _run(["pg_restore", "--no-owner", "--exit-on-error", "--single-transaction", f"--dbname={uri}",
                  str(dump)], env, "pg_restore")
        except BaseException:
            if exists:
                with engine.connect() as conn:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                    conn.execute(text(f'ALTER SCHEMA "{aside}" RENAME TO "{schema}"'))
            raise
        if exists:
            with engine.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{aside}" CASCADE'))
    finally:
        engine.dispose()


def record_ids(settings: Settings) -> set[str]:
    engine = _data_engine(settings)
    try:
        with engine.connect() as conn:
            return set(conn.scalars(select(Record.id)))
    finally:
        engine.dispose()


def _restore_blobs(settings: Settings, src: Path, manifest: dict[str, Any]) -> RestoreResult:
    for path in _blob_files(settings.blob_dir).values():
        path.unlink()  # the vault's own blobs (only reached with force, or none at all)
    rows = record_ids(settings)
    restored = orphans = 0
    for blob in manifest["blobs"]:
        if blob["id"] not in rows:
            orphans += 1
            continue
        name = f"{blob['id']}.hvb"
        size, sha = _copy_hashed(Path(src) / BLOB_DIR / blob["id"][:2] / name,
                                 settings.blob_dir / blob["id"][:2] / name)
        if (size, sha) != (blob["size"], blob["sha256"]):
            raise BackupError(f"blob {blob['id']} changed while it was restored")
        restored += 1
    in_backup = {blob["id"] for blob in manifest["blobs"]}
    return RestoreResult(restored, orphans, sorted(rows - in_backup))


def verify_restored(settings: Settings, manifest: dict[str, Any]) -> list[str]:
    """Problems in the restored vault: every record row has its blob, every blob is the manifest's size and SHA-256,
    no blob lacks a row. (The audit chain is checked by the caller, which holds the verifier key.)"""
    problems = []
    expected = {blob["id"]: (blob["size"], blob["sha256"]) for blob in manifest["blobs"]}
    present = _blob_files(settings.blob_dir)
    rows = record_ids(settings)
    for record_id in sorted(rows - set(present)):
        problems.append(f"record {record_id} has no blob")
    for blob_id, path in present.items():
        if blob_id not in rows:
            problems.append(f"blob {blob_id} has no record row")
        elif blob_id not in expected:
            problems.append(f"blob {blob_id} is not in the backup's manifest")
        elif _sha256_file(path) != expected[blob_id]:
            problems.append(f"blob {blob_id} does not match the manifest (size or SHA-256)")
    return problems
