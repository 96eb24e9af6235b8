"""Where wrapped keys are kept: patient KEKs and service keys, in a database APART from the data database.

Owns: the key-store schema (its own DeclarativeBase and Alembic history), the engine and its safety settings, and
the small set of queries KeyManager needs.
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
from pathlib import Path

from sqlalchemy import DateTime, Integer, LargeBinary, String, create_engine, delete, event, func, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from kms.errors import KeyStoreError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "kms_alembic_version"
TOMBSTONE_VERSION = 0
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class KeyStoreBase(DeclarativeBase):
    pass


class PatientKek(KeyStoreBase):
    __tablename__ = "patient_keks"

    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    root_version: Mapped[int] = mapped_column(Integer)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    destroyed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def __repr__(self) -> str:
        destroyed = self.destroyed_at is not None
        return f"PatientKek(patient_id={self.patient_id!r}, version={self.version}, destroyed={destroyed})"


class ServiceKey(KeyStoreBase):
    __tablename__ = "service_keys"

    purpose: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    root_version: Mapped[int] = mapped_column(Integer)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    def __repr__(self) -> str:
        return f"ServiceKey(purpose={self.purpose!r}, version={self.version})"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
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
            count = result.rowcount or 0
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
