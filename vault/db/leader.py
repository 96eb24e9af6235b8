"""One process at a time: leadership of a cluster-wide duty (the audit checkpointer) through the database.

Owns a PostgreSQL session-level advisory lock held on a dedicated connection: the process that holds it leads; the
others keep asking (`held()` is cheap to call on every poll) and take over within one poll once the leader's
connection ends (process killed, machine lost: PostgreSQL releases the lock with the session). A lost or broken
connection means the lock is lost: `held()` then answers False until it is taken again. On SQLite (one machine, the
embedded default) every caller leads; the work itself stays serialised by its own transaction locks.

It never blocks waiting for the lock and never holds a transaction open.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Connection, Engine, text

log = logging.getLogger("healthvault.leader")
CHECKPOINTER = 0x68760001  # advisory lock keys of this application ("hv" + duty), paired with the schema's hash
# Advisory locks are per database, not per schema: the first key is the data schema's hash, so two vaults in two
# schemas of one database each have their own leader.
_TRY = "SELECT pg_try_advisory_lock(hashtext(current_schema()), :k)"
_UNLOCK = "SELECT pg_advisory_unlock(hashtext(current_schema()), :k)"


class LeaderLock:
    def __init__(self, engine: Engine, key: int, *, duty: str) -> None:
        self.engine = engine
        self.key = key
        self.duty = duty
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    @property
    def exclusive(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def held(self) -> bool:
        """Whether this process leads now (taking the lead when it is free)."""
        if not self.exclusive:
            return True
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute(text("SELECT 1"))
                    self._conn.commit()
                    return True
                except Exception:  # noqa: BLE001 - the session (and with it the lock) is gone
                    log.warning("lost the %s lead (database connection ended)", self.duty)
                    self._drop()
            try:
                conn = self.engine.connect()
                got = conn.execute(text(_TRY), {"k": self.key}).scalar()
                conn.commit()
            except Exception:  # noqa: BLE001 - database unreachable: nobody here leads
                return False
            if not got:
                conn.close()
                return False
            self._conn = conn
            log.info("this process now leads: %s", self.duty)
            return True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except Exception as exc:  # noqa: BLE001 - closing what is already broken
                log.debug("closing a broken leader connection: %s", type(exc).__name__)

    def release(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute(text(_UNLOCK), {"k": self.key})
                    self._conn.commit()
                except Exception as exc:  # noqa: BLE001 - a dead session released it already
                    log.debug("leader lock release: %s", type(exc).__name__)
                self._conn.close()
                self._conn = None
