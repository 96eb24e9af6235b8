"""Where wrapped keys are kept: patient KEKs and service keys, in a database APART from the data database.

Owns: the key-store schema (its own DeclarativeBase and Alembic history), the engine and its safety settings, the
small set of queries KeyManager needs, and the bookkeeping of key operations that must outlive a process: root
rotation requests (two-person rule: who asked, who approved, opaque account ids only) and rewrap jobs (phase,
cursor, counters, so a killed rewrap resumes where it stopped).
Never: sees an unwrapped key (everything stored here is wrapped by the root key), shares a metadata object or
migration history with vault, or lives in the data database: erasure destroys a patient's KEK here, and restoring a
data backup must not bring it back.

Embedded default: SQLite with WAL, `secure_delete=ON` (deleted wrapped keys are overwritten, not just unlinked) and
foreign keys on, set on every connection. PostgreSQL: tables live in their own schema (created by migrate()), reached
through `schema_translate_map`, so the same models serve both.

A destroyed patient keeps one tombstone row (version 0, empty `wrapped`, `destroyed_at` set): without it, "this
patient was erased" and "this patient never had a key" would look alike after a restart.

Limits of shredding here: on SQLite, destroy also truncates the WAL so old page images go too. On PostgreSQL the
deleted row versions stay in the table until VACUUM reuses the space, and in WAL archives; and any backup of the key
store itself still holds the KEK. Keep key-store backups short-lived, or erasure is only as final as their expiry.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    and_,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import CursorResult, Engine, Result, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from kms.errors import KeyStoreError
from kms.keystore_tables import JOB_FIELDS, TOMBSTONE_VERSION, PatientKek, RewrapJob, RotationRequest, ServiceKey

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "kms_alembic_version"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE/DELETE matched (Session.execute returns a CursorResult for DML; typed as plain Result)."""
    return cast(CursorResult[Any], result).rowcount or 0


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
    finally:
        cursor.close()


class KeyStore:
    def __init__(self, url: str, *, schema: str | None = None) -> None:
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if schema is not None and (self.is_sqlite or not _SCHEMA_NAME.match(schema)):
            raise KeyStoreError("a key-store schema is for PostgreSQL only and must be a lower-case identifier")
        self.schema = schema
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            _create_private_file(Path(parsed.database))
        self._engine: Engine = create_engine(url, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            event.listen(self._engine, "connect", _sqlite_pragmas)
        self.engine = self._engine.execution_options(schema_translate_map={None: schema}) if schema else self._engine
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"KeyStore({self._engine.url.render_as_string(hide_password=True)!r}, schema={self.schema!r})"

    def migrate(self) -> None:
        """Bring the key-store schema to the newest revision (idempotent)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["schema"] = self.schema
        config.attributes["version_table"] = VERSION_TABLE
        try:
            with self._engine.begin() as conn:
                if self.schema:
                    conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except SQLAlchemyError as exc:
            raise KeyStoreError(f"key store migration failed: {type(exc).__name__}") from exc

    def dispose(self) -> None:
        self._engine.dispose()

    def session(self) -> Session:
        return self._sessions()

    # --- patient KEKs ---------------------------------------------------------------------------------------------
    def patient_keks(self, patient_id: str) -> list[PatientKek]:
        """All rows for a patient, newest version first (a tombstone, if any, is version 0)."""
        with self.session() as s:
            return list(s.scalars(select(PatientKek).where(PatientKek.patient_id == patient_id)
                                  .order_by(PatientKek.version.desc())))

    def patient_kek(self, patient_id: str, version: int) -> PatientKek | None:
        with self.session() as s:
            return s.get(PatientKek, (patient_id, version))

    def is_destroyed(self, patient_id: str) -> bool:
        return self.patient_kek(patient_id, TOMBSTONE_VERSION) is not None

    def add_patient_kek(self, row: PatientKek) -> None:
        """Insert a KEK row; KeyStoreError if that (patient, version) exists (e.g. two processes raced)."""
        try:
            with self.session() as s, s.begin():
                if s.get(PatientKek, (row.patient_id, TOMBSTONE_VERSION)) is not None:
                    raise KeyStoreError("this patient's keys were destroyed; an erased patient id cannot be reused")
                s.add(row)
        except IntegrityError:
            raise KeyStoreError("a key for this patient and version already exists") from None

    def destroy_patient(self, patient_id: str, *, now: dt.datetime) -> int:
        """Delete every KEK row of the patient and leave a tombstone; returns how many KEKs were deleted."""
        with self.session() as s, s.begin():
            result = s.execute(delete(PatientKek).where(PatientKek.patient_id == patient_id,
                                                        PatientKek.version != TOMBSTONE_VERSION))
            if s.get(PatientKek, (patient_id, TOMBSTONE_VERSION)) is None:
                s.add(PatientKek(patient_id=patient_id, version=TOMBSTONE_VERSION, root_version=0, wrapped=b"",
                                 created_at=now, destroyed_at=now))
            count = _rowcount(result)
        if self.is_sqlite:
            # Old page images of the deleted rows survive in the WAL file until a checkpoint truncates it.
            with self._engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return count

    # --- service keys ---------------------------------------------------------------------------------------------
    def newest_service_key(self, purpose: str) -> ServiceKey | None:
        with self.session() as s:
            return s.scalars(select(ServiceKey).where(ServiceKey.purpose == purpose)
                             .order_by(ServiceKey.version.desc()).limit(1)).first()

    def service_key_row(self, purpose: str, version: int) -> ServiceKey | None:
        with self.session() as s:
            return s.get(ServiceKey, (purpose, version))

    def add_service_key(self, row: ServiceKey) -> bool:
        """Insert; False if another process inserted the same (purpose, version) first."""
        try:
            with self.session() as s, s.begin():
                s.add(row)
            return True
        except IntegrityError:
            return False

    # --- rotation and rewrap -----------------------------------------------------------------------------------
    def newest_kek_versions(self, patient_ids: Iterable[str]) -> dict[str, int]:
        """{patient_id: newest KEK version} for these patients; 0 (TOMBSTONE_VERSION) for an erased patient;
        patients without any key are absent."""
        ids = list(dict.fromkeys(patient_ids))
        found: dict[str, int] = {}
        with self.session() as s:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                query = (select(PatientKek.patient_id, func.max(PatientKek.version))
                         .where(PatientKek.patient_id.in_(chunk)).group_by(PatientKek.patient_id))
                found.update({pid: int(version) for pid, version in s.execute(query)})
        return found

    def all_newest_kek_versions(self) -> dict[str, int]:
        """{patient_id: newest KEK version} for every patient in the store (0 for the erased)."""
        with self.session() as s:
            query = select(PatientKek.patient_id, func.max(PatientKek.version)).group_by(PatientKek.patient_id)
            return {pid: int(version) for pid, version in s.execute(query)}

    def live_patient_ids(self, *, after: str | None, limit: int) -> list[str]:
        """Patients that still have keys (not erased), in id order, after `after`."""
        with self.session() as s:
            query = (select(PatientKek.patient_id).group_by(PatientKek.patient_id)
                     .having(func.min(PatientKek.version) > TOMBSTONE_VERSION)
                     .order_by(PatientKek.patient_id).limit(limit))
            if after is not None:
                query = query.where(PatientKek.patient_id > after)
            return list(s.scalars(query))

    def add_patient_keks(self, rows: list[PatientKek]) -> None:
        """Insert several KEK rows in one transaction (KeyStoreError if any exists or the patient was erased)."""
        try:
            with self.session() as s, s.begin():
                erased = set(s.scalars(select(PatientKek.patient_id).where(
                    PatientKek.patient_id.in_([r.patient_id for r in rows]),
                    PatientKek.version == TOMBSTONE_VERSION)))
                if erased:
                    raise KeyStoreError("this patient's keys were destroyed; an erased patient id cannot be reused")
                s.add_all(rows)
        except IntegrityError:
            raise KeyStoreError("a key for this patient and version already exists") from None

    def keks_under_old_root(self, current_root: int, *, after: tuple[str, int] | None,
                            limit: int) -> list[PatientKek]:
        """KEK rows wrapped by a root version other than `current_root`, in (patient, version) order."""
        with self.session() as s:
            query = select(PatientKek).where(PatientKek.root_version != current_root,
                                             PatientKek.version != TOMBSTONE_VERSION)
            if after is not None:
                query = query.where(or_(PatientKek.patient_id > after[0],
                                        and_(PatientKek.patient_id == after[0], PatientKek.version > after[1])))
            return list(s.scalars(query.order_by(PatientKek.patient_id, PatientKek.version).limit(limit)))

    def update_kek_wraps(self, changes: list[tuple[str, int, int, int, bytes]]) -> int:
        """Compare-and-swap new root wraps: (patient_id, version, old_root, new_root, wrapped); one transaction.

        A row whose root version moved meanwhile (another rewrap) or that was destroyed is left alone. Returns the
        number of rows changed."""
        changed = 0
        with self.session() as s, s.begin():
            for patient_id, version, old_root, new_root, wrapped in changes:
                result = s.execute(update(PatientKek).where(
                    PatientKek.patient_id == patient_id, PatientKek.version == version,
                    PatientKek.root_version == old_root).values(root_version=new_root, wrapped=wrapped)
                    .execution_options(synchronize_session=False))
                changed += _rowcount(result)
        return changed

    def service_keys_under_old_root(self, current_root: int) -> list[ServiceKey]:
        with self.session() as s:
            return list(s.scalars(select(ServiceKey).where(ServiceKey.root_version != current_root)
                                  .order_by(ServiceKey.purpose, ServiceKey.version)))

    def update_service_key_wrap(self, purpose: str, version: int, old_root: int, new_root: int,
                                wrapped: bytes) -> bool:
        with self.session() as s, s.begin():
            result = s.execute(update(ServiceKey).where(
                ServiceKey.purpose == purpose, ServiceKey.version == version, ServiceKey.root_version == old_root)
                .values(root_version=new_root, wrapped=wrapped).execution_options(synchronize_session=False))
            return _rowcount(result) > 0

    def root_version_counts(self) -> dict[int, dict[str, int]]:
        """{root_version: {"patient_keks": n, "service_keys": m}} over every live wrapped key."""
        counts: dict[int, dict[str, int]] = {}
        with self.session() as s:
            for version, n in s.execute(select(PatientKek.root_version, func.count())
                                        .where(PatientKek.version != TOMBSTONE_VERSION)
                                        .group_by(PatientKek.root_version)):
                counts.setdefault(int(version), {"patient_keks": 0, "service_keys": 0})["patient_keks"] = n
            for version, n in s.execute(select(ServiceKey.root_version, func.count())
                                        .group_by(ServiceKey.root_version)):
                counts.setdefault(int(version), {"patient_keks": 0, "service_keys": 0})["service_keys"] = n
        return counts

    def kek_version_counts(self) -> dict[int, int]:
        """{KEK version: number of live KEK rows with that version} (erased patients excluded)."""
        with self.session() as s:
            return {int(v): n for v, n in s.execute(select(PatientKek.version, func.count())
                                                     .where(PatientKek.version != TOMBSTONE_VERSION)
                                                     .group_by(PatientKek.version))}

    def old_kek_rows(self, *, after: tuple[str, int] | None, limit: int) -> list[tuple[str, int, dt.datetime]]:
        """(patient_id, version, created_at of the patient's newest version) of every KEK version that is not its
        patient's newest: the candidates for retirement."""
        newest = (select(PatientKek.patient_id.label("pid"), func.max(PatientKek.version).label("top"))
                  .group_by(PatientKek.patient_id).subquery())
        top = PatientKek.__table__.alias("top_row")
        with self.session() as s:
            query = (select(PatientKek.patient_id, PatientKek.version, top.c.created_at)
                     .join(newest, newest.c.pid == PatientKek.patient_id)
                     .join(top, and_(top.c.patient_id == newest.c.pid, top.c.version == newest.c.top))
                     .where(PatientKek.version < newest.c.top, PatientKek.version != TOMBSTONE_VERSION))
            if after is not None:
                query = query.where(or_(PatientKek.patient_id > after[0],
                                        and_(PatientKek.patient_id == after[0], PatientKek.version > after[1])))
            return [(pid, int(v), created) for pid, v, created in
                    s.execute(query.order_by(PatientKek.patient_id, PatientKek.version).limit(limit))]

    def delete_patient_keks(self, items: list[tuple[str, int]]) -> int:
        """Delete retired KEK versions; never a patient's newest version or a tombstone. Returns rows deleted."""
        deleted = 0
        with self.session() as s, s.begin():
            for patient_id, version in items:
                if version == TOMBSTONE_VERSION:
                    continue
                top = s.scalar(select(func.max(PatientKek.version)).where(PatientKek.patient_id == patient_id))
                if top is None or version >= top:
                    continue
                result = s.execute(delete(PatientKek).where(PatientKek.patient_id == patient_id,
                                                            PatientKek.version == version))
                deleted += _rowcount(result)
        if deleted and self.is_sqlite:
            with self._engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    # --- rotation requests ----------------------------------------------------------------------------------------
    def add_rotation_request(self, row: RotationRequest) -> None:
        with self.session() as s, s.begin():
            s.add(row)

    def rotation_request(self, request_id: str) -> RotationRequest | None:
        with self.session() as s:
            return s.get(RotationRequest, request_id)

    def rotation_requests(self, *, target: str | None = None, statuses: tuple[str, ...] | None = None,
                          limit: int = 100) -> list[RotationRequest]:
        """Newest first."""
        with self.session() as s:
            query = select(RotationRequest)
            if target is not None:
                query = query.where(RotationRequest.target == target)
            if statuses is not None:
                query = query.where(RotationRequest.status.in_(statuses))
            return list(s.scalars(query.order_by(RotationRequest.requested_at.desc(), RotationRequest.id)
                                  .limit(limit)))

    def move_rotation_request(self, request_id: str, *, from_status: str, **values: object) -> bool:
        """Compare-and-swap a request's status (and other columns): False if it was not in `from_status` (two
        approvers racing: only one wins)."""
        with self.session() as s, s.begin():
            result = s.execute(update(RotationRequest).where(RotationRequest.id == request_id,
                                                             RotationRequest.status == from_status)
                               .values(**values).execution_options(synchronize_session=False))
            return _rowcount(result) > 0

    # --- rewrap jobs ------------------------------------------------------------------------------------------------
    def add_rewrap_job(self, row: RewrapJob) -> None:
        with self.session() as s, s.begin():
            s.add(row)

    def unfinished_rewrap_job(self) -> RewrapJob | None:
        with self.session() as s:
            return s.scalars(select(RewrapJob).where(RewrapJob.status == "running")
                             .order_by(RewrapJob.started_at.desc()).limit(1)).first()

    def rewrap_jobs(self, *, limit: int = 10) -> list[RewrapJob]:
        with self.session() as s:
            return list(s.scalars(select(RewrapJob).order_by(RewrapJob.started_at.desc()).limit(limit)))

    def take_over_rewrap_job(self, job_id: str, runner: str, *, now: dt.datetime) -> bool:
        with self.session() as s, s.begin():
            result = s.execute(update(RewrapJob).where(RewrapJob.id == job_id, RewrapJob.status == "running")
                               .values(runner=runner, updated_at=now).execution_options(synchronize_session=False))
            return _rowcount(result) > 0

    def save_rewrap_job(self, job_id: str, runner: str, **values: object) -> bool:
        """Record progress; False when another process took the job over (the caller must stop)."""
        unknown = set(values) - set(JOB_FIELDS)
        if unknown:
            raise ValueError(f"not rewrap job fields: {sorted(unknown)}")
        with self.session() as s, s.begin():
            result = s.execute(update(RewrapJob).where(RewrapJob.id == job_id, RewrapJob.runner == runner)
                               .values(**values).execution_options(synchronize_session=False))
            return _rowcount(result) > 0

    def count_rows(self) -> dict[str, int]:
        with self.session() as s:
            return {"patient_keks": s.scalar(select(func.count()).select_from(PatientKek)) or 0,
                    "service_keys": s.scalar(select(func.count()).select_from(ServiceKey)) or 0}


def _create_private_file(path: Path) -> None:
    """Create the SQLite file 0600 before SQLite does (with the process umask); wrapped keys are still secrets'
    envelopes."""
    if path.exists():
        return
    if not path.parent.is_dir():
        raise KeyStoreError(f"directory {path.parent} for the key store does not exist")
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
