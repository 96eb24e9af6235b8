"""Group commit: several audited units of work in one SQLite write transaction, each inside its own savepoint.

Owns the shared transaction in which the database lane (api/lanes.py) runs a batch of queued hot reads. SQLite admits
one writer, and every audited read writes its audit event, so each read used to pay for its own BEGIN, COMMIT (a WAL
append of ~7 pages) and thread hand-offs. N queued reads that share one transaction pay for them once
(docs/performance.md). A unit that commits only releases its savepoint. A unit that fails rolls back to its savepoint
and takes nothing else with it. The audit events a unit committed are held here and reach the central sink only
after the shared COMMIT. Their chain steps are linked in memory and written together just before that COMMIT
(`audit.trail.DeferredChains`): one multi-row insert instead of three statements per event.

Never: lets a result out before the shared COMMIT has succeeded. The lane hands results back only after `commit`
returns. The following are the caller's cue to answer every unit the transaction carried with AuditUnavailable, so
that no read is answered whose audit event is not durable:
- a failed commit;
- a shared transaction that SQLite rolled back on its own mid-batch (a full disk, an I/O error), which `end_unit`
  notices, as does the marker savepoint if pysqlite silently began a new transaction;
- a savepoint statement that failed;
- deferred chain steps that do not continue their head rows (`trail.ChainBroken`).
Never lets a unit's session leak into the commit: `end_unit` closes what the unit left open, which rolls it back to
its savepoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Connection, event
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session

from audit import trail
from audit.statements import driver_error
from vault.db.engine import SAVEPOINT_FAILED, SAVEPOINT_NEEDS_TRANSACTION

if TYPE_CHECKING:
    from vault.runtime import Vault


class TransactionLost(Exception):
    """The shared transaction is not the one the batch's units wrote into: SQLite ended it by itself, or a savepoint
    statement failed and left the savepoint stack unlike what the units believe."""


# A savepoint taken right after BEGIN and released just before COMMIT. pysqlite silently begins a new transaction at
# the next write after SQLite rolled one back on its own; that new transaction has no such savepoint, so the release
# fails and the batch is not committed.
_MARKER = "hv_group_commit"
# The savepoint a unit's session opens at the driver. One unit runs at a time, so one name serves them all.
_UNIT = "hv_unit"


class UnitSession(Session):
    """The session of one unit of a group transaction.

    Why not a plain Session joined with `create_savepoint`: the hot reads run their statements straight on the driver
    (audit.statements), so the ORM's transaction would only open and release the unit's savepoint, and its state
    machine cost ~180 µs of a read's ~570 in process (docs/performance.md). While the ORM holds no transaction of its
    own, this session opens, releases and rolls back the unit's savepoint itself, at the driver, and does the audit
    bookkeeping the ORM events would do (`trail.take_committed`, `trail.forget_pending`). Once the ORM begins a
    transaction (a query, a flush), it runs in a savepoint nested inside the unit's, and commit, rollback, close and
    reset end both.

    Never: lets a commit, rollback, close or reset end less than the whole unit since its last commit, or the ORM's
    savepoint outlive the unit's; begins a transaction of its own (`begin()`) while the unit's savepoint is open; opens
    the unit's savepoint outside the shared transaction (vault.db refuses: its RELEASE would commit on its own)."""

    def __init__(self, connection: Connection, info: dict) -> None:
        super().__init__(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False,
                         info=info)
        self._unit_open = False

    def connection(self, bind_arguments=None, execution_options=None) -> Connection:
        if self._transaction is None and bind_arguments is None and execution_options is None:
            if not self._unit_open:
                self.bind.dialect.do_savepoint(self.bind, _UNIT)  # refused outside the shared transaction (vault.db)
                self._unit_open = True
            return self.bind
        return super().connection(bind_arguments, execution_options)

    def begin(self, nested: bool = False):
        if self._unit_open and not nested:  # as a Session whose transaction has begun: its end is the unit's
            raise InvalidRequestError("A transaction is already begun on this Session.")
        return super().begin(nested)

    def commit(self) -> None:
        if self._transaction is not None:
            super().commit()  # the ORM's savepoint, and its after_commit bookkeeping
        elif self._unit_open:
            trail.take_committed(self)
        self._end_unit_savepoint(commit=True)

    def rollback(self) -> None:
        if self._transaction is not None:
            super().rollback()  # the ORM's savepoint, and its after_soft_rollback bookkeeping
        if self._unit_open:
            trail.forget_pending(self)
        self._end_unit_savepoint(commit=False)

    def close(self) -> None:
        self._undo_and(super().close)

    def reset(self) -> None:
        self._undo_and(super().reset)

    def _undo_and(self, end) -> None:
        """`end` the ORM's part (close or reset: no rollback event), then undo the unit's savepoint and what it
        appended: a unit savepoint left open would be released, with the unit's writes, by the batch's COMMIT, and the
        session may be used again before the unit ends."""
        begun = self._unit_open or self._transaction is not None
        try:
            end()
        finally:
            try:
                self._end_unit_savepoint(commit=False)
            finally:
                if begun:
                    trail.forget_pending(self)

    def _end_unit_savepoint(self, *, commit: bool) -> None:
        if not self._unit_open:
            return
        self._unit_open = False
        dialect = self.bind.dialect
        if not commit:
            dialect.do_rollback_to_savepoint(self.bind, _UNIT)
        dialect.do_release_savepoint(self.bind, _UNIT)


def _flush_deferred_chain_steps(state) -> None:
    """A unit that reads the trail through the ORM sees the events it and the batch appended (other statements leave
    them deferred)."""
    if trail.reads_the_trail(state.statement):
        state.session.info[trail.DEFERRED_KEY].flush(state.session)


event.listen(UnitSession, "after_commit", trail.take_committed)
event.listen(UnitSession, "after_soft_rollback", trail.forget_pending)
event.listen(UnitSession, "do_orm_execute", _flush_deferred_chain_steps)


class LockTaken(Exception):
    """BEGIN IMMEDIATE found SQLite's write lock held by another connection (on a connection without a busy timeout,
    at once). Nothing was begun; the connection can be used again."""


_SQLITE_BUSY = 5  # the primary result code; extended codes (BUSY_RECOVERY, ...) keep it in their low byte


class GroupTransaction:
    """One shared write transaction on `connection` (a SQLite connection the caller keeps for itself).

    `forward` receives the audit events once the COMMIT has succeeded (default: `Vault.forward_audit_events`)."""

    def __init__(self, vault: Vault, connection: Connection,
                 forward: Callable[[list[dict]], None] | None = None) -> None:
        self._vault = vault
        self._connection = connection
        self._forward = forward or vault.forward_audit_events
        self._held: list[dict] = []
        self._open: list[Session] = []
        self._chains = trail.DeferredChains()
        self._transaction = connection.begin()
        try:
            # The write lock is taken now, not at the first audit append. The batch's reads then see the newest
            # state, and no append can meet SQLITE_BUSY_SNAPSHOT (a read transaction that another writer's commit
            # overtook can never become a write transaction).
            try:
                self._driver().execute("BEGIN IMMEDIATE")
            except connection.dialect.loaded_dbapi.OperationalError as error:
                if getattr(error, "sqlite_errorcode", 0) & 0xFF == _SQLITE_BUSY:
                    raise LockTaken() from None
                raise driver_error("BEGIN IMMEDIATE", error, connection.dialect) from error
            connection.info.pop(SAVEPOINT_FAILED, None)
            self._driver().execute(f"SAVEPOINT {_MARKER}")
            connection.info[SAVEPOINT_NEEDS_TRANSACTION] = True  # set only once begun: commit or rollback clears it
        except BaseException:
            self._transaction.rollback()
            raise

    def session(self) -> Session:
        """The current unit's session, inside a savepoint of the shared transaction. One per unit: SQLite nests
        savepoints, so a second session's savepoint would be released or rolled back with the first one's."""
        if self._open:
            raise RuntimeError("a unit of a group transaction has one session")
        session = UnitSession(self._connection, {trail.HELD_KEY: self._held, trail.DEFERRED_KEY: self._chains})
        self._open.append(session)
        return session

    def end_unit(self) -> None:
        """Close the sessions the unit opened; raise TransactionLost when the shared transaction did not survive it."""
        open_sessions, self._open = self._open, []
        for session in open_sessions:
            session.close()  # rolls back what it had not committed, and drops what that appended
        self._require_intact()

    def commit(self) -> None:
        """Commit every unit at once, then forward their audit events."""
        self._require_intact()
        try:
            self._chains.write(self._connection)
        except trail.ChainBroken:
            raise TransactionLost() from None
        try:
            self._driver().execute(f"RELEASE SAVEPOINT {_MARKER}")
        except self._connection.dialect.loaded_dbapi.Error:
            raise TransactionLost() from None
        self._transaction.commit()
        self._connection.info.pop(SAVEPOINT_NEEDS_TRANSACTION, None)
        held, self._held = self._held, []
        self._forward(held)

    def rollback(self) -> None:
        """Undo every unit, at SQLAlchemy's level and the driver's (a refused COMMIT leaves the driver in the
        transaction, holding the write lock)."""
        self._held = []
        for session in self._open:
            session.close()
        self._open = []
        try:
            self._transaction.rollback()  # also closes out a transaction a failed COMMIT left deactivated
        finally:
            self._connection.info.pop(SAVEPOINT_NEEDS_TRANSACTION, None)
            driver = self._driver()
            if driver is not None and driver.in_transaction:
                driver.rollback()

    def _driver(self):
        if self._connection.closed or self._connection.invalidated:
            return None
        return self._connection.connection.dbapi_connection

    def _require_intact(self) -> None:
        driver = self._driver()
        if driver is None or not driver.in_transaction or self._connection.info.get(SAVEPOINT_FAILED) \
                or self._connection.get_nested_transaction() is not None:
            raise TransactionLost()
