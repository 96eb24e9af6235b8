"""Cached keys agree across processes: invalidation notices in the data database (issue 17 item 3).

Owns telling every process (API servers, queue workers) to drop cached keys that another process made unusable: an
erasure (one patient's KEK and DEKs) or a retirement of key versions (everything cached). `publish` adds a notice in
the caller's transaction (and, on PostgreSQL, a NOTIFY that is delivered when that transaction commits); a
`KeyStateWatcher` thread in each long-running process LISTENs for it and evicts at once, and also reads the notice
table every `poll_seconds`, so a notice is acted on even if a notification was missed (connection lost: everything
cached is dropped on reconnect) and on SQLite, which has no notifications.

The notice carries a patient id or nothing; never a key, never PHI. The patient's data rows are already out of reach
when a notice is published (tokens and grants revoked in the same database), so this only shortens how long key
material can stay in another process's memory.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from vault.db.models import KeyInvalidation

if TYPE_CHECKING:
    import datetime as dt

    from vault.runtime import Vault

log = logging.getLogger("healthvault.keystate")
CHANNEL = "hv_key_state"


def publish(session: Session, *, patient_id: str | None, reason: str, now: dt.datetime) -> None:
    """Every process drops `patient_id`'s cached keys (None: all cached keys) once this transaction commits."""
    session.add(KeyInvalidation(patient_id=patient_id, reason=reason, created_at=now))
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


class KeyStateWatcher(threading.Thread):
    """Evicts from this process's key cache what other processes' notices name."""

    def __init__(self, vault: Vault, *, poll_seconds: float = 1.0) -> None:
        super().__init__(name="key-state-watcher", daemon=True)
        self.vault = vault
        self.poll_seconds = poll_seconds
        self.stopped = threading.Event()
        self.applied = 0
        self._last = self._newest()

    def _newest(self) -> int:
        with self.vault.session() as session:
            return session.scalar(select(func.coalesce(func.max(KeyInvalidation.id), 0))) or 0

    def apply(self) -> int:
        """Act on every notice newer than the last one seen; returns how many."""
        with self.vault.session() as session:
            rows = session.execute(select(KeyInvalidation.id, KeyInvalidation.patient_id)
                                   .where(KeyInvalidation.id > self._last).order_by(KeyInvalidation.id)).all()
        for notice_id, patient_id in rows:
            self.vault.keys.forget(patient_id)
            self._last = notice_id
        self.applied += len(rows)
        return len(rows)

    def run(self) -> None:
        if self.vault.engine.dialect.name == "postgresql":
            self._listen()
        else:
            while not self.stopped.wait(self.poll_seconds):
                self._apply_logged()

    def _apply_logged(self) -> None:
        try:
            self.apply()
        except Exception as exc:  # noqa: BLE001 - the database is away: try again at the next poll
            log.warning("key state not read: %s", type(exc).__name__)

    def _listen(self) -> None:
        import psycopg

        url = make_url(self.vault.settings.database_url).set(drivername="postgresql")
        while not self.stopped.is_set():
            try:
                with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True,
                                     connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._apply_logged()  # what was published while not listening
                    while not self.stopped.is_set():
                        for _notice in conn.notifies(timeout=self.poll_seconds, stop_after=1):
                            break
                        self._apply_logged()
            except Exception as exc:  # noqa: BLE001 - connection lost: notices may have been missed
                log.warning("key state listener reconnecting: %s", type(exc).__name__)
                self.vault.keys.forget(None)
                self.stopped.wait(self.poll_seconds)

    def stop(self) -> None:
        self.stopped.set()


def watch(vault: Vault, *, poll_seconds: float = 1.0) -> KeyStateWatcher:
    """Start this process's watcher (API servers and queue workers)."""
    watcher = KeyStateWatcher(vault, poll_seconds=poll_seconds)
    watcher.start()
    return watcher
