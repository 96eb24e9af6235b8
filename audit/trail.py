"""Appending events to the hash-chained trail.

Owns the chain step. Events are spread over K chains (chain = pseudonym mod K) so that concurrent writers on
PostgreSQL do not queue behind one lock through every commit's disk flush; each chain is gapless and hash-linked, and
the Merkle log (`audit.log`) later integrates all chains into one signed tree. The append runs inside the caller's
transaction: the chain head is advanced first (an UPDATE, which takes the head row's lock on PostgreSQL and the
database write lock on SQLite and holds it to commit), so two writers can never fork a chain. If anything fails, the
caller's transaction fails with it. Hashing rules live in `audit.verify`, the module an assessor reads.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from audit import verify
from audit.models import AuditEvent, ChainHead
from audit.vocabulary import ACTIONS, OUTCOMES

GENESIS = "0" * 64
EVENT_FORMAT = 1
MAX_USER_AGENT = 256


@dataclasses.dataclass(frozen=True)
class NewEvent:
    actor: str
    actor_role: str
    action: str
    outcome: str
    resource_type: str
    resource_id: str | None = None
    patient: str | None = None
    reason: str | None = None
    grant_id: str | None = None
    request_id: str | None = None
    client_addr: str | None = None
    user_agent: str | None = None


def format_time(moment: dt.datetime) -> str:
    """RFC 3339, UTC, microseconds: the one spelling of time inside a hash."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def chain_for(key: str | None, chains: int) -> int:
    if chains <= 1 or not key:
        return 0
    return int(key[:8], 16) % chains if all(c in "0123456789abcdef" for c in key[:8]) else 0


def canonical_event(row: AuditEvent) -> dict:
    """The hashed view of a stored event (the same dict the exporter writes)."""
    return {
        "v": EVENT_FORMAT, "chain": row.chain_id, "seq": row.seq, "time": format_time(row.occurred_at),
        "actor": row.actor, "actor_role": row.actor_role, "action": row.action, "resource_type": row.resource_type,
        "resource_id": row.resource_id, "patient": row.patient_pseudonym, "outcome": row.outcome,
        "reason": row.reason, "grant_id": row.grant_id, "request_id": row.request_id,
        "client_addr": row.client_addr, "user_agent": row.user_agent, "prev_hash": row.prev_hash,
    }


def ensure_chains(session: Session, chains: int) -> None:
    """Create missing chain-head rows (idempotent; called at start-up)."""
    existing = set(session.scalars(select(ChainHead.chain_id)))
    missing = [c for c in range(max(chains, 1)) if c not in existing]
    if missing:
        session.execute(insert(ChainHead), [
            {"chain_id": c, "seq": -1, "hash": GENESIS, "integrated_seq": -1} for c in missing])


def append(session: Session, event: NewEvent, *, now: dt.datetime, chains: int) -> AuditEvent:
    """Link one event into its chain, in the caller's transaction (the caller commits)."""
    if event.action not in ACTIONS or event.outcome not in OUTCOMES:
        raise ValueError("unknown audit action or outcome")
    chain = chain_for(event.patient or event.actor, chains)
    moved = session.execute(
        update(ChainHead).where(ChainHead.chain_id == chain).values(seq=ChainHead.seq + 1)
        .returning(ChainHead.seq, ChainHead.hash)
    ).first()
    if moved is None:
        raise RuntimeError(f"audit chain {chain} has no head row")
    seq, prev_hash = moved
    row = AuditEvent(
        chain_id=chain, seq=seq, occurred_at=now, actor=event.actor, actor_role=event.actor_role,
        action=event.action, resource_type=event.resource_type, resource_id=event.resource_id,
        patient_pseudonym=event.patient, outcome=event.outcome, reason=event.reason, grant_id=event.grant_id,
        request_id=event.request_id, client_addr=event.client_addr,
        user_agent=event.user_agent[:MAX_USER_AGENT] if event.user_agent else None, prev_hash=prev_hash,
    )
    row.hash = verify.event_hash(verify.canonical_bytes(canonical_event(row))).hex()
    session.execute(update(ChainHead).where(ChainHead.chain_id == chain).values(hash=row.hash))
    session.add(row)
    session.flush()
    session.info.setdefault(PENDING_KEY, []).append({**canonical_event(row), "hash": row.hash})
    return row


PENDING_KEY = "audit.pending"


def take_committed(session: Session) -> list[dict]:
    """The events this session appended, for forwarding once its transaction has committed."""
    return session.info.pop(PENDING_KEY, [])


def forget_pending(session: Session) -> None:
    session.info.pop(PENDING_KEY, None)
