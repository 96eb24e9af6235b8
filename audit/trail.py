"""Appending events to the hash-chained trail.

Owns the chain step. Events are spread over K chains (chain = pseudonym mod K) so that concurrent writers on
PostgreSQL do not queue behind one lock through every commit's disk flush; each chain is gapless and hash-linked, and
the Merkle log (`audit.log`) later integrates all chains into one signed tree. The append runs inside the caller's
transaction: the chain head is advanced first (an UPDATE, which takes the head row's lock on PostgreSQL and the
database write lock on SQLite and holds it to commit), so two writers can never fork a chain. If anything fails, the
caller's transaction fails with it. Hashing rules live in `audit.verify`, the module an assessor reads.

Suites: a chain keeps one event format for its whole life. Format 1 (SHA-256, the "aes" suite) uses chains 0..K-1,
format 2 (SM3, the "sm" suite) chains 32768..32768+K-1, so a vault that switches suite simply starts appending to
fresh chains (from genesis) while the old ones stay as they are, and an event's format follows from its chain id
(no column stores it). The Merkle log integrates both kinds of chain into one tree.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, text, update
from sqlalchemy.orm import Session, SessionTransaction

from audit import verify
from audit.models import AuditEvent, ChainHead, UTCDateTime
from audit.vocabulary import ACTIONS, OUTCOMES

GENESIS = "0" * 64
EVENT_FORMAT = 1  # the "aes" suite's format; SM_EVENT_FORMAT for the "sm" suite
SM_EVENT_FORMAT = 2
SM_CHAIN_BASE = verify.SM_CHAIN_BASE  # 32768: chains of format-2 (SM3) events start here
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
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def chain_for(key: str | None, chains: int, event_format: int = EVENT_FORMAT) -> int:
    base = _chain_base(event_format)
    if chains <= 1 or not key:
        return base
    return base + (int(key[:8], 16) % chains if all(c in "0123456789abcdef" for c in key[:8]) else 0)


def _chain_base(event_format: int) -> int:
    if event_format == EVENT_FORMAT:
        return 0
    if event_format == SM_EVENT_FORMAT:
        return SM_CHAIN_BASE
    raise ValueError(f"unknown audit event format {event_format!r}")


def format_of_chain(chain_id: int) -> int:
    """The event format (v) of every event of a chain."""
    return SM_EVENT_FORMAT if chain_id >= SM_CHAIN_BASE else EVENT_FORMAT


def canonical_event(row: AuditEvent) -> dict[str, Any]:
    """The hashed view of a stored event (the same dict the exporter writes)."""
    return _canonical({c: getattr(row, c) for c in _COLUMNS})


_COLUMNS = ("chain_id", "seq", "occurred_at", "actor", "actor_role", "action", "resource_type", "resource_id",
            "patient_pseudonym", "outcome", "reason", "grant_id", "request_id", "client_addr", "user_agent",
            "prev_hash")


def ensure_chains(session: Session, chains: int, event_format: int = EVENT_FORMAT) -> None:
    """Create missing chain-head rows for the chains events of `event_format` go to (idempotent; called at
    start-up)."""
    base = _chain_base(event_format)
    existing = set(session.scalars(select(ChainHead.chain_id)))
    missing = [c for c in range(base, base + max(chains, 1)) if c not in existing]
    if missing:
        session.execute(insert(ChainHead), [
            {"chain_id": c, "seq": -1, "hash": GENESIS, "integrated_seq": -1} for c in missing])


_HEADS = cast(Table, ChainHead.__table__)
_EVENTS = cast(Table, AuditEvent.__table__)
_INSERT_COLUMNS = (*_COLUMNS, "hash")
_ADVANCE = (update(_HEADS).where(_HEADS.c.chain_id == bindparam("c")).values(seq=_HEADS.c.seq + 1)
            .returning(_HEADS.c.seq, _HEADS.c.hash))
_MOVE = update(_HEADS).where(_HEADS.c.chain_id == bindparam("c")).values(hash=bindparam("h"))
_INSERT = insert(_EVENTS)
_SET_HEAD = (update(_HEADS).where(_HEADS.c.chain_id == bindparam("c"))
             .values(seq=bindparam("s"), hash=bindparam("h")))
# PostgreSQL: the head's new hash and the event go in one round trip (a data-modifying CTE always runs).
# Built from the fixed column names; every value is a bound parameter.
_INSERT_AND_MOVE = text(
    "WITH moved_head AS (UPDATE audit_chain_heads SET hash = :h WHERE chain_id = :c) "  # noqa: S608
    f"INSERT INTO audit_events ({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join(':' + c for c in _INSERT_COLUMNS)})"
).bindparams(bindparam("occurred_at", type_=UTCDateTime()))


@dataclasses.dataclass(frozen=True, slots=True)
class Deferred:
    """An event appended in a session that defers its writing (`DEFER_KEY`): not yet linked, hashed or written.
    Whoever holds the session's enclosing transaction links and writes it with `append_linked` before committing."""

    event: NewEvent
    now: dt.datetime
    chain: int


def append(session: Session, event: NewEvent, *, now: dt.datetime, chains: int,
           event_format: int = EVENT_FORMAT) -> dict[str, Any] | None:
    """Link one event into its chain, in the caller's transaction (the caller commits); returns the exported view.

    Two round trips on PostgreSQL: the head UPDATE that takes the chain's lock and returns (seq, prev_hash), then one
    statement that moves the head's hash and inserts the event; the lock is then held only through the caller's
    commit. `event_format` 2 (the "sm" suite) hashes with SM3 into the chains from 32768.

    In a session whose `info` holds `DEFER_KEY` (a unit of the SQLite read fast path, vault/db/fastpath) the event is
    only checked and kept as a value (`Deferred`, returns None): its session's commit hands it to the enclosing
    transaction (`HELD_KEY`), whose holder links and writes it with `append_linked` before its COMMIT."""
    if event.action not in ACTIONS or event.outcome not in OUTCOMES:
        raise ValueError("unknown audit action or outcome")
    chain = chain_for(event.patient or event.actor, chains, event_format)
    if session.info.get(DEFER_KEY):
        if session.get_transaction() is None:
            session.begin()  # so that a rollback before the next commit drops the event (a rollback event fires)
        session.info.setdefault(PENDING_KEY, []).append(Deferred(event, now, chain))
        return None
    moved = session.execute(_ADVANCE, {"c": chain}).first()
    if moved is None:
        raise RuntimeError(f"audit chain {chain} has no head row")
    values, exported = link(event, now=now, chain=chain, seq=moved[0], prev_hash=moved[1])
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_INSERT_AND_MOVE, {**values, "c": chain, "h": values["hash"]})
    else:
        session.execute(_MOVE, {"c": chain, "h": values["hash"]})
        session.execute(_INSERT, values)
    session.info.setdefault(PENDING_KEY, []).append(exported)
    return exported


def link(event: NewEvent, *, now: dt.datetime, chain: int, seq: int,
         prev_hash: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(row values, exported view) of `event` as step `seq` of `chain` after `prev_hash`, both with its hash."""
    values: dict[str, Any] = dict(
        chain_id=chain, seq=seq, occurred_at=now, actor=event.actor, actor_role=event.actor_role,
        action=event.action, resource_type=event.resource_type, resource_id=event.resource_id,
        patient_pseudonym=event.patient, outcome=event.outcome, reason=event.reason, grant_id=event.grant_id,
        request_id=event.request_id, client_addr=event.client_addr,
        user_agent=event.user_agent[:MAX_USER_AGENT] if event.user_agent else None, prev_hash=prev_hash,
    )
    exported = _canonical(values)
    values["hash"] = exported["hash"] = verify.event_hash(verify.canonical_bytes(exported)).hex()
    return values, exported


def append_linked(connection: Connection, deferred: Sequence[Deferred]) -> list[dict[str, Any]]:
    """Link `deferred` events in order onto their chains' heads and write them: one read of the touched heads (locked
    on PostgreSQL: FOR UPDATE), one multi-row insert, one update per touched head. Runs in the caller's transaction,
    which must already hold SQLite's write lock (BEGIN IMMEDIATE), so no other writer moves a head before the COMMIT.
    Returns the exported views, in order."""
    if not deferred:
        return []
    chains = sorted({item.chain for item in deferred})
    heads: dict[int, tuple[int, str]] = {
        row.chain_id: (row.seq, row.hash) for row in connection.execute(
            select(_HEADS.c.chain_id, _HEADS.c.seq, _HEADS.c.hash).where(_HEADS.c.chain_id.in_(chains))
            .with_for_update())}
    rows: list[dict[str, Any]] = []
    views: list[dict[str, Any]] = []
    for item in deferred:
        if item.chain not in heads:
            raise RuntimeError(f"audit chain {item.chain} has no head row")
        seq, prev_hash = heads[item.chain]
        values, exported = link(item.event, now=item.now, chain=item.chain, seq=seq + 1, prev_hash=prev_hash)
        heads[item.chain] = (seq + 1, values["hash"])
        rows.append(values)
        views.append(exported)
    connection.execute(_INSERT, rows)
    connection.execute(_SET_HEAD, [{"c": chain, "s": seq, "h": hash_} for chain, (seq, hash_) in heads.items()])
    return views


def _canonical(values: dict[str, Any]) -> dict[str, Any]:
    return {
        "v": format_of_chain(values["chain_id"]), "chain": values["chain_id"], "seq": values["seq"],
        "time": format_time(values["occurred_at"]),
        "actor": values["actor"], "actor_role": values["actor_role"], "action": values["action"],
        "resource_type": values["resource_type"], "resource_id": values["resource_id"],
        "patient": values["patient_pseudonym"], "outcome": values["outcome"], "reason": values["reason"],
        "grant_id": values["grant_id"], "request_id": values["request_id"], "client_addr": values["client_addr"],
        "user_agent": values["user_agent"], "prev_hash": values["prev_hash"],
    }


PENDING_KEY = "audit.pending"
# A list in `session.info` under this key belongs to an enclosing transaction the session only holds a savepoint of:
# the session's commit moves its events there, and the enclosing transaction forwards them when it commits.
HELD_KEY = "audit.held"


def take_committed(session: Session) -> list[Any]:
    """The events this session appended, for forwarding once its transaction has committed; none when that commit
    only released a savepoint or a deferring session's part of an enclosing transaction (they wait in that
    transaction's `HELD_KEY` list)."""
    events: list[Any] = session.info.pop(PENDING_KEY, [])
    held = session.info.get(HELD_KEY)
    if held is not None:
        held.extend(events)
        return []
    return events


def forget_pending(session: Session, rolled_back: SessionTransaction | None = None) -> None:
    """The session's transaction (`rolled_back`) rolled back: its events are gone. A `begin_nested()` savepoint that
    rolls back takes none of them: the events appended before it are still in the transaction. No code appends inside
    one (an event appended there and rolled back would still reach the sink)."""
    if rolled_back is not None and rolled_back.nested:
        return
    session.info.pop(PENDING_KEY, None)


# `session.info[DEFER_KEY]` true: the session's events are kept as values (`Deferred`) and written by the holder of
# its enclosing transaction (`append_linked`), the read fast path's batch (vault/db/fastpath).
DEFER_KEY = "audit.defer"
