"""Typed tables of the audit trail: events, chain heads, Merkle leaves, signed checkpoints, archive permits.

Owns the storage shape of the trail. Events hold pseudonyms, roles, closed-vocabulary codes and random ids only —
never PHI. Every table here is append-only in the database (triggers in the data-DB migration), except the chain-head
rows, which move forward under the append lock. The data database's Alembic history (vault/db/migrations) creates these
tables; this module must not import the vault.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, DateTime, Index, Integer, LargeBinary, String, Text, TypeDecorator, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


BigId = BigInteger().with_variant(Integer, "sqlite")


class AuditBase(DeclarativeBase):
    pass


DENIALS = "outcome = 'deny'"  # the partial index's predicate, repeated literally by the queries that use it


class AuditEvent(AuditBase):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ux_audit_events_chain_seq", "chain_id", "seq", unique=True),
        Index("ix_audit_events_patient", "patient_pseudonym", "id"),
        Index("ix_audit_events_actor", "actor", "id"),
        # The denial-burst count (vault/access/alerts.py): one actor's denials of the last minute, found without
        # walking every event the actor ever caused. Partial: denials are few.
        Index("ix_audit_events_actor_denials", "actor", "occurred_at",
              postgresql_where=text(DENIALS), sqlite_where=text(DENIALS)),
    )

    # Surrogate key: cursor pagination and the order in which events enter the Merkle log. Not hashed.
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    chain_id: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(64))
    actor_role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(48), index=True)
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    patient_pseudonym: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outcome: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str | None] = mapped_column(String(128), nullable=True)
    grant_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    client_addr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(256), nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class ChainHead(AuditBase):
    """The newest event of each chain; its row lock (or SQLite's write lock) serialises appends to that chain."""

    __tablename__ = "audit_chain_heads"

    chain_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)  # seq of the newest event; -1 when the chain is empty
    hash: Mapped[str] = mapped_column(String(64))
    integrated_seq: Mapped[int] = mapped_column(BigInteger)  # newest seq already in the Merkle log


class Leaf(AuditBase):
    """The Merkle log: leaf i is the event (chain, seq) with this event hash. Kept when event bodies are archived."""

    __tablename__ = "audit_leaves"

    leaf_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    chain_id: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(BigInteger)
    event_hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class Checkpoint(AuditBase):
    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tree_size: Mapped[int] = mapped_column(BigInteger, index=True)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    kind: Mapped[str] = mapped_column(String(16))  # "checkpoint" | "tombstone"
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class ArchivePermit(AuditBase):
    """Written only by `audit archive` in the same transaction as its prune: the delete trigger lets through exactly
    the events below `below_leaf` whose archive has been verified, and nothing else."""

    __tablename__ = "audit_archive_permits"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    below_leaf: Mapped[int] = mapped_column(BigInteger)
    archive_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
