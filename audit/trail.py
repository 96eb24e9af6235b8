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

from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.util import find_tables

from audit import verify
from audit.models import AuditEvent, ChainHead, UTCDateTime
from audit.statements import HotStatement, _connection
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


def canonical_event(row: AuditEvent) -> dict:
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


_HEADS = ChainHead.__table__
_EVENTS = AuditEvent.__table__
_ADVANCE = HotStatement(update(_HEADS).where(_HEADS.c.chain_id == bindparam("c")).values(seq=_HEADS.c.seq + 1)
                        .returning(_HEADS.c.seq, _HEADS.c.hash))
_MOVE = HotStatement(update(_HEADS).where(_HEADS.c.chain_id == bindparam("c")).values(hash=bindparam("h")))
_INSERT_COLUMNS = (*_COLUMNS, "hash")
_HEAD = HotStatement(select(_HEADS.c.seq, _HEADS.c.hash).where(_HEADS.c.chain_id == bindparam("c")))
_SET_HEAD = HotStatement(update(_HEADS).where(_HEADS.c.chain_id == bindparam("c"))
                         .values(seq=bindparam("s"), hash=bindparam("h")))
_INSERT = HotStatement(insert(_EVENTS).values({name: bindparam(name) for name in _INSERT_COLUMNS}))
# PostgreSQL: the head's new hash and the event go in one round trip (a data-modifying CTE always runs).
_INSERT_AND_MOVE = HotStatement(text(
    "WITH moved_head AS (UPDATE audit_chain_heads SET hash = :h WHERE chain_id = :c) "
    f"INSERT INTO audit_events ({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join(':' + c for c in _INSERT_COLUMNS)})"
).bindparams(bindparam("occurred_at", type_=UTCDateTime())))


def append(session: Session, event: NewEvent, *, now: dt.datetime, chains: int,
           event_format: int = EVENT_FORMAT) -> dict:
    """Link one event into its chain, in the caller's transaction (the caller commits); returns the exported view.

    Two round trips on PostgreSQL: the head UPDATE that takes the chain's lock and returns (seq, prev_hash), then one
    statement that moves the head's hash and inserts the event; the lock is then held only through the caller's
    commit. Statements are built once and run on the session's driver connection (`audit.statements`: SQLAlchemy's
    execution path costs more than the database work here). `event_format` 2 (the "sm" suite) hashes with SM3 into
    the chains from 32768. In a unit of a group transaction (SQLite) the step is linked here and written at the
    group's commit (`DeferredChains`)."""
    if event.action not in ACTIONS or event.outcome not in OUTCOMES:
        raise ValueError("unknown audit action or outcome")
    chain = chain_for(event.patient or event.actor, chains, event_format)
    deferred: DeferredChains | None = session.info.get(DEFERRED_KEY)
    moved = deferred.next_link(session, chain) if deferred is not None else _ADVANCE.first(session, {"c": chain})
    if moved is None:
        raise RuntimeError(f"audit chain {chain} has no head row")
    seq, prev_hash = moved
    values = dict(
        chain_id=chain, seq=seq, occurred_at=now, actor=event.actor, actor_role=event.actor_role,
        action=event.action, resource_type=event.resource_type, resource_id=event.resource_id,
        patient_pseudonym=event.patient, outcome=event.outcome, reason=event.reason, grant_id=event.grant_id,
        request_id=event.request_id, client_addr=event.client_addr,
        user_agent=event.user_agent[:MAX_USER_AGENT] if event.user_agent else None, prev_hash=prev_hash,
    )
    exported = _canonical(values)
    values["hash"] = exported["hash"] = verify.event_hash(verify.canonical_bytes(exported)).hex()
    if deferred is not None:
        deferred.add(session, values)
    elif session.get_bind().dialect.name == "postgresql":
        _INSERT_AND_MOVE.execute(session, {**values, "c": chain, "h": values["hash"]})
    else:
        _MOVE.execute(session, {"c": chain, "h": values["hash"]})
        _INSERT.execute(session, values)
    session.info.setdefault(PENDING_KEY, []).append(exported)
    return exported


def _canonical(values: dict) -> dict:
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


def take_committed(session: Session) -> list[dict]:
    """The events this session appended, for forwarding once its transaction has committed; none when that commit
    only released a savepoint (they wait in the enclosing transaction's `HELD_KEY` list)."""
    events = session.info.pop(PENDING_KEY, [])
    deferred = session.info.get(DEFERRED_KEY)
    if deferred is not None:
        deferred.committed(session)
    held = session.info.get(HELD_KEY)
    if held is not None:
        held.extend(events)
        return []
    return events


def forget_pending(session: Session, rolled_back=None) -> None:
    """The session's transaction (`rolled_back`, None: the unit savepoint of a group transaction's session) rolled
    back: its events are gone. A `begin_nested()` savepoint that rolls back takes none of them: the events appended
    before it are still in the transaction. A unit of a group transaction appends and writes none inside one
    (`DeferredChains` refuses); no other code appends inside one either (an event appended there and rolled back
    would still reach the sink)."""
    if rolled_back is not None and rolled_back.nested:
        return
    session.info.pop(PENDING_KEY, None)
    DeferredChains.rolled_back(session)


# A `DeferredChains` in `session.info` under this key: the session is one unit of a group transaction
# (vault/group_commit.py), whose chain steps are linked in memory and written when the group commits.
DEFERRED_KEY = "audit.deferred"
_STEPS_KEY = "audit.deferred.steps"  # the unit's steps since its last commit (they roll back with its savepoint)
_FLUSHED_KEY = "audit.deferred.flushed"  # committed steps a flush wrote inside the unit's current savepoint


class _Step:
    __slots__ = ("values", "written")

    def __init__(self, values: dict) -> None:
        self.values = values
        self.written = False


class DeferredChains:
    """The chain steps of one group transaction: linked in memory as units append, written in one go at its commit.

    Why: a group transaction holds SQLite's write lock from its first statement to its COMMIT, so no other writer
    can move a chain head in between, and the three statements of each chain step (advance the head, move its hash,
    insert the event) can be replaced by one read of each head the batch touches and one multi-row insert at the end.
    Each event is still linked, hashed and returned when it is appended, and is written in the same transaction as
    the unit that appended it.

    Savepoint semantics follow the units' sessions. The steps a unit appended since its last commit live in its
    session's `info`; its commit (the release of its savepoint) hands them here (`take_committed`), and its rollback
    drops them (`forget_pending`). A chain's next link is the unit's own newest step on that chain, else the newest
    committed one, else the head row as the database holds it.

    Never: writes a step whose unit rolled back, or a chain that does not continue its head row link by link
    (`write` checks this before any row goes in). A statement that reads through the ORM inside a unit (the
    denial-burst count reads `audit_events`) sees every step appended so far: `flush` writes them first.
    """

    def __init__(self) -> None:
        self._base: dict[int, tuple[int, str]] = {}  # each touched chain's head row as the batch found it
        self._heads: dict[int, tuple[int, str]] = {}  # each touched chain's newest committed step
        self._committed: list[_Step] = []

    def next_link(self, session: Session, chain: int) -> tuple[int, str] | None:
        """(seq, prev_hash) for the next event on `chain`, or None when the chain has no head row."""
        _refuse_nested(session)
        for step in reversed(session.info.get(_STEPS_KEY, ())):
            if step.values["chain_id"] == chain:
                return step.values["seq"] + 1, step.values["hash"]
        head = self._heads.get(chain)
        if head is None:
            row = _HEAD.first(session, {"c": chain})
            if row is None:
                return None
            head = self._heads[chain] = self._base[chain] = (row.seq, row.hash)
        else:
            _connection(session)  # the unit's savepoint exists, so its commit or rollback reaches this batch
        return head[0] + 1, head[1]

    def add(self, session: Session, values: dict) -> None:
        session.info.setdefault(_STEPS_KEY, []).append(_Step(values))

    def committed(self, session: Session) -> None:
        """The session released its savepoint: its steps are now the batch's, and what its flushes wrote stays."""
        session.info.pop(_FLUSHED_KEY, None)
        steps = session.info.pop(_STEPS_KEY, ())
        self._committed.extend(steps)
        for step in steps:
            self._heads[step.values["chain_id"]] = (step.values["seq"], step.values["hash"])

    def flush(self, session: Session) -> None:
        """Write every step appended so far, inside the session's savepoint. Committed steps written here count as
        unwritten again if that savepoint rolls back (`rolled_back`)."""
        _refuse_nested(session)
        connection = _connection(session)
        committed = [step for step in self._committed if not step.written]
        self._write(connection, [*committed, *session.info.get(_STEPS_KEY, ())])
        session.info.setdefault(_FLUSHED_KEY, []).extend(committed)

    @staticmethod
    def rolled_back(session: Session) -> None:
        """The session's savepoint rolled back: its own steps are gone, and so are the rows its flushes wrote."""
        session.info.pop(_STEPS_KEY, None)
        for step in session.info.pop(_FLUSHED_KEY, ()):
            step.written = False

    def write(self, connection) -> None:
        """Write the committed steps not yet written; raise ChainBroken when they do not continue the head rows."""
        last: dict[int, tuple[int, str]] = dict(self._base)
        for step in self._committed:
            values = step.values
            seq, prev_hash = last[values["chain_id"]]
            if values["seq"] != seq + 1 or values["prev_hash"] != prev_hash:
                raise ChainBroken(f"audit chain {values['chain_id']} does not continue at seq {values['seq']}")
            last[values["chain_id"]] = (values["seq"], values["hash"])
        self._write(connection, self._committed)

    @staticmethod
    def _write(connection, steps: list[_Step]) -> None:
        new = [step for step in steps if not step.written]
        if not new:
            return
        heads = {step.values["chain_id"]: step.values for step in new}
        _INSERT.execute_many(connection, [step.values for step in new])
        _SET_HEAD.execute_many(connection, [{"c": chain, "s": values["seq"], "h": values["hash"]}
                                            for chain, values in heads.items()])
        for step in new:
            step.written = True


def _refuse_nested(session: Session) -> None:
    """Steps are tracked per unit savepoint, not per `begin_nested()` savepoint inside it: appending or writing them
    there is refused rather than risk an event lost or kept wrongly (no hot read nests savepoints)."""
    if session.get_nested_transaction() is not None:
        raise RuntimeError("audit events of a group transaction cannot be appended or read inside begin_nested()")


_TRAIL_TABLES = frozenset({"audit_events", "audit_chain_heads"})


def reads_the_trail(statement) -> bool:
    """Whether a statement run through the ORM may read or write the trail's tables (a textual one always may)."""
    if isinstance(statement, TextClause):
        return True
    return any(getattr(table, "name", None) in _TRAIL_TABLES for table in find_tables(
        statement, include_aliases=True, include_joins=True, include_selects=True, include_crud=True))


class ChainBroken(Exception):
    """Deferred chain steps that do not link to their chain's head row: the batch must not commit."""
