"""Group commit: several audited units of work in one SQLite write transaction, each inside its own savepoint.

Owns the shared transaction in which the database lane (api/lanes.py) runs a batch of queued hot reads. SQLite admits
one writer, and every audited read writes its audit event, so each read used to pay for its own BEGIN, COMMIT (a WAL
append of ~7 pages) and thread hand-offs. N queued reads that share one transaction pay for them once
(docs/performance.md). A unit that commits only releases its savepoint. A unit that fails rolls back to its savepoint
and takes nothing else with it. The audit events a unit committed are held here and reach the central sink only
after the shared COMMIT.

Never: lets a result out before the shared COMMIT has succeeded. The lane hands results back only after `commit`
returns. A failed commit, or a shared transaction that SQLite rolled back on its own mid-batch (a full disk, an I/O
error; `end_unit` notices), is the caller's cue to answer every unit it carried with AuditUnavailable, so no read is
answered whose audit event is not durable. Never lets a unit's session leak into the commit: `end_unit` closes what
the unit left open, which rolls it back to its savepoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from audit import trail

if TYPE_CHECKING:
    from vault.runtime import Vault


class TransactionLost(Exception):
    """SQLite ended the shared transaction by itself: what the batch's units wrote so far is gone."""


class GroupTransaction:
    """One shared write transaction on `connection` (a SQLite connection the caller keeps for itself)."""

    def __init__(self, vault: Vault, connection: Connection) -> None:
        self._vault = vault
        self._connection = connection
        self._held: list[dict] = []
        self._open: list[Session] = []
        self._transaction = connection.begin()
        try:
            # The write lock is taken now, not at the first audit append. The batch's reads then see the newest
            # state, and no append can meet SQLITE_BUSY_SNAPSHOT (a read transaction that another writer's commit
            # overtook can never become a write transaction).
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self._transaction.rollback()
            raise

    def session(self) -> Session:
        """A session for the current unit, inside a savepoint of the shared transaction."""
        session = self._vault.sessions(bind=self._connection, join_transaction_mode="create_savepoint",
                                       info={trail.HELD_KEY: self._held})
        self._open.append(session)
        return session

    def end_unit(self) -> None:
        """Close the sessions the unit opened; raise TransactionLost when the shared transaction did not survive it."""
        open_sessions, self._open = self._open, []
        for session in open_sessions:
            session.close()
        if not self._driver_in_transaction():
            raise TransactionLost()

    def commit(self) -> None:
        """Commit every unit at once, then forward their audit events."""
        if not self._driver_in_transaction():
            raise TransactionLost()
        self._transaction.commit()
        held, self._held = self._held, []
        self._vault.forward_audit_events(held)

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
            driver = self._driver()
            if driver is not None and driver.in_transaction:
                driver.rollback()

    def _driver(self):
        if self._connection.closed or self._connection.invalidated:
            return None
        return self._connection.connection.dbapi_connection

    def _driver_in_transaction(self) -> bool:
        driver = self._driver()
        return driver is not None and bool(driver.in_transaction)
