"""Typed SQLAlchemy models of the data database.

Owns the shape of every stored row. Columns ending in `_enc` hold kms field ciphertexts bound to (table, column, row
id, patient id); `_bidx` columns hold truncated HMAC blind indexes. No column may hold plaintext PHI or an ID number:
`inventory.json` lists every column with its GB/T 39725 category and level, and a test fails on any column missing
from it. Schema changes go through an Alembic migration in `migrations/versions/`.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from audit.models import BigId, UTCDateTime


class Base(DeclarativeBase):
    pass


ROLES = ("patient", "doctor", "escort", "auditor", "sysadmin", "secadmin", "auditadmin")
STAFF_ROLES = tuple(r for r in ROLES if r != "patient")
CATEGORIES = ("lab_report", "exam_report", "medical_record", "id_document", "other")
LABELS = ("normal", "sensitive", "special")


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # The patient's profile DEK, wrapped by the patient KEK held in the separate key store.
    wrapped_dek: Mapped[bytes] = mapped_column(LargeBinary)
    real_name_enc: Mapped[bytes] = mapped_column(LargeBinary)
    id_number_enc: Mapped[bytes] = mapped_column(LargeBinary)
    phone_enc: Mapped[bytes] = mapped_column(LargeBinary)
    birth_date_enc: Mapped[bytes] = mapped_column(LargeBinary)
    id_number_bidx: Mapped[bytes] = mapped_column(LargeBinary(16), unique=True)
    phone_bidx: Mapped[bytes] = mapped_column(LargeBinary(16), index=True)
    # Set when the patient is erased (vault/erasure.py): the KEK is destroyed, blind indexes replaced by random bytes.
    erased_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("patients.id"), unique=True, nullable=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # TOTP secret sealed under kms's totp service key, bound to this account id.
    totp_secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    totp_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # AUTH-2: staff passwords expire; the last few argon2id hashes are kept to refuse reuse.
    password_changed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    previous_password_hashes: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AuthToken(Base):
    """Server-side bearer tokens: only the SHA-256 of the token is stored, so a DB read yields no usable token."""

    __tablename__ = "auth_tokens"

    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Record(Base):
    __tablename__ = "records"
    __table_args__ = (Index("ix_records_patient_created", "patient_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    category: Mapped[str] = mapped_column(String(32))
    # Sensitivity label; label_enc seals the same value under the record DEK so an edit in the database is detected.
    label: Mapped[str] = mapped_column(String(16), default="normal")
    label_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # The category, sealed the same way (a category grant reads it: INT-1).
    category_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    content_type: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    # Per-record DEK wrapped by the patient KEK; it encrypts the blob and every *_enc column of this row.
    wrapped_dek: Mapped[bytes] = mapped_column(LargeBinary)
    title_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    filename_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    sha256_enc: Mapped[bytes] = mapped_column(LargeBinary)
    # Lab-sheet extraction (issue 5): status, a stable error code, the LabReport JSON sealed under the record DEK.
    ocr_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    ocr_error: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lab_results_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class LabCorrection(Base):
    """A patient's correction of one extracted value: old and new sealed, kept as history (never updated)."""

    __tablename__ = "lab_corrections"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    record_id: Mapped[str] = mapped_column(ForeignKey("records.id"), index=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    change_enc: Mapped[bytes] = mapped_column(LargeBinary)


class RateLimit(Base):
    """One rate-limit bucket: attempts counted in a fixed window (issue 14 item 3), shared by every API process.

    `bucket` is a keyed pseudonym of (scope, client address or target), never the address or username itself."""

    __tablename__ = "rate_limits"

    bucket: Mapped[str] = mapped_column(String(40), primary_key=True)
    window_start: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    hits: Mapped[int] = mapped_column(Integer)


CONSENT_ITEMS = ("health_data", "id_number", "ocr")


class Consent(Base):
    """One consent decision (PIPL-1): an item given or not, against the privacy notice's version and SHA-256.

    Append-only (database triggers refuse UPDATE and DELETE): a withdrawal is a new row, so the history is the table.
    """

    __tablename__ = "consents"
    __table_args__ = (Index("ix_consents_patient", "patient_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    item: Mapped[str] = mapped_column(String(16))
    given: Mapped[bool] = mapped_column(Boolean)
    notice_version: Mapped[str] = mapped_column(String(32))
    notice_hash: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class PatientExport(Base):
    """A patient's PIPL-45 export package (vault/exports/): its progress, and the sealed ZIP until it is downloaded
    once or 24 hours pass. The passphrase that encrypts the ZIP is never stored."""

    __tablename__ = "patient_exports"
    __table_args__ = (Index("ix_patient_exports_patient", "patient_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    status: Mapped[str] = mapped_column(String(16))  # queued | running | done | failed | downloaded | expired
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    downloaded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The DEK that seals the package blob (on top of the ZIP's own AES), wrapped by the patient KEK.
    wrapped_dek: Mapped[bytes] = mapped_column(LargeBinary)
class KeyInvalidation(Base):
    """Cluster-wide notice that cached keys must go (issue 17): an erased patient's (patient_id), or every cached key
    (patient_id NULL: key versions retired). Each process evicts what a new row names (vault.db.keystate)."""

    __tablename__ = "key_invalidations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    patient_id: Mapped[str | None] = mapped_column(String(36))
    reason: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
