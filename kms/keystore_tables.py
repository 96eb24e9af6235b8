"""The key store's tables: wrapped patient KEKs, wrapped service keys, root rotation requests and rewrap jobs.

Owns the storage shape of the key store (its own DeclarativeBase, never shared with the data database). Every key
column holds a key wrapped by the root key; nothing here is ever an unwrapped key. `kms/keystore.py` owns the
engine, the queries and the migrations that create these tables.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, Index, Integer, LargeBinary, String, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# A destroyed patient keeps one row of this version with an empty `wrapped` (see kms/keystore.py).
TOMBSTONE_VERSION = 0


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
    # kms.suites id of this KEK (and so of the cipher that wraps DEKs under it); 1 = AES-256-GCM for older rows.
    suite: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))

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


class RotationRequest(KeyStoreBase):
    """A root-key rotation asked for by one security administrator, executed only after a different one approved."""

    __tablename__ = "rotation_requests"
    __table_args__ = (Index("ix_rotation_requests_status", "status", "requested_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    target: Mapped[str] = mapped_column(String(16))  # "root"
    status: Mapped[str] = mapped_column(String(16))  # pending | approved | executing | executed | expired | failed
    requested_by: Mapped[str] = mapped_column(String(64))  # opaque account id
    requested_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    approved_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    approved_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    executed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    new_version: Mapped[int | None] = mapped_column(Integer, nullable=True)

    def __repr__(self) -> str:
        return f"RotationRequest(id={self.id!r}, target={self.target!r}, status={self.status!r})"


class RewrapJob(KeyStoreBase):
    """Progress of one rewrap run. Rewrapping is idempotent, so the cursor only saves work: a stale cursor after a
    crash means one batch is looked at twice, never that a key is skipped or damaged."""

    __tablename__ = "rewrap_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # running | done
    phase: Mapped[str] = mapped_column(String(16))  # keks | service | patients | records | done
    cursor: Mapped[str | None] = mapped_column(String(130), nullable=True)  # last key looked at in this phase
    runner: Mapped[str] = mapped_column(String(32))  # the process that owns the job now (a resume takes it over)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    total: Mapped[int] = mapped_column(Integer, default=0)  # keys to look at, estimated when the job (re)started
    scanned: Mapped[int] = mapped_column(Integer, default=0)
    rewrapped: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)

    def __repr__(self) -> str:
        return f"RewrapJob(id={self.id!r}, status={self.status!r}, phase={self.phase!r})"


JOB_FIELDS = ("status", "phase", "cursor", "updated_at", "finished_at", "total", "scanned", "rewrapped", "failed")
