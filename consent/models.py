"""Consent grants and break-glass claims: the source of truth Casbin policies are built from.

A grant names the patient, the grantee account, the scope (record ids and/or categories), actions, an encrypted
purpose, the window (not-before, expires-at) and, once withdrawn, when; its integrity tag (consent/integrity.py)
binds what authorisation reads. Rows are never deleted: a revoked or expired
grant stays as a processing record (PIPL art. 55). The data-DB migrations (vault/db/migrations) create these tables.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Boolean, DateTime, Dialect, Index, LargeBinary, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset otherwise).

    consent/ imports no project package but kms/, so it keeps this column type of its own; audit/models.py has the
    same one for the trail's tables (tests/consent checks that both store and load alike)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class ConsentBase(DeclarativeBase):
    pass


class Grant(ConsentBase):
    __tablename__ = "grants"
    __table_args__ = (
        Index("ix_grants_grantee_patient", "grantee_id", "patient_id", "expires_at"),
        Index("ix_grants_patient", "patient_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(36))
    grantee_id: Mapped[str] = mapped_column(String(36))
    # JSON lists of record ids / categories (no PHI: random ids and a closed vocabulary).
    record_ids: Mapped[str] = mapped_column(Text)
    categories: Mapped[str] = mapped_column(Text)
    include_future: Mapped[bool] = mapped_column(Boolean)
    actions: Mapped[str] = mapped_column(String(128))
    purpose_enc: Mapped[bytes] = mapped_column(LargeBinary)
    # The random salt of the receipt's purpose commitment, sealed like the purpose (NULL: a format /1 receipt).
    purpose_salt_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    consult_ref: Mapped[str | None] = mapped_column(String(64), nullable=True)
    not_before: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    receipt: Mapped[str] = mapped_column(Text)
    # consent.integrity tag over the authorisation fields (scope, window, parties, revoked_at): an edit is detected.
    integrity_mac: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class BreakGlass(ConsentBase):
    __tablename__ = "breakglass"
    __table_args__ = (Index("ix_breakglass_doctor_patient", "doctor_id", "patient_id", "expires_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    doctor_id: Mapped[str] = mapped_column(String(36))
    patient_id: Mapped[str] = mapped_column(String(36))
    reason_enc: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # consent.integrity tag over (id, doctor, patient, created_at, expires_at).
    integrity_mac: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
