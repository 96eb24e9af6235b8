"""Background jobs of one process: work that services queue by kind and that runs off the request path.

Owns the seam between a service that queues work (`vault.jobs.enqueue(session, kind, *ids)` inside the caller's
transaction, or `submit(kind, *ids)`) and where that work runs, and the in-process table of long jobs whose
progress callers poll (`track` / `tracked`). The embedded default runs each kind on an in-process thread pool of its
own size; handlers are registered once per process by the composition root
(`vault.runtime.open_vault`), so no service imports another domain to queue its work. Arguments are ids only, never
PHI, so that a queue backend can carry them as they are. On PostgreSQL deployments with `job_queue = procrastinate`
the same interface is served by a real queue (`vault.jobs.queue`). This module imports no domain.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

Handler = Callable[..., Any]


class UnknownJob(LookupError):
    """A job kind no handler was registered for (a wiring error, never a client's)."""


class Jobs:
    """Named handlers, each on an in-process pool created on first use."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Handler, int]] = {}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._tracked: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def register(self, kind: str, handler: Handler, *, workers: int = 1) -> None:
        """`handler(*args)` runs each job of `kind`; `workers` of them at once in this process."""
        with self._lock:
            self._handlers[kind] = (handler, workers)

    def submit(self, kind: str, *args: Any) -> Future[Any]:
        with self._lock:
            try:
                handler, workers = self._handlers[kind]
            except KeyError:
                raise UnknownJob(kind) from None
            pool = self._pools.get(kind)
            if pool is None:
                pool = self._pools[kind] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=kind)
        return pool.submit(handler, *args)

    def enqueue(self, session: Session, kind: str, *args: Any) -> None:
        """Queue a job as part of `session`'s transaction: it runs only if that transaction commits (in this process:
        handed to the pool right after the COMMIT, dropped on rollback; a queue backend inserts it in the same
        transaction)."""
        with self._lock:
            if kind not in self._handlers:
                raise UnknownJob(kind)
        pending = session.info.setdefault(_PENDING, [])
        pending.append((kind, args))
        if not session.info.get(_HOOKED):
            session.info[_HOOKED] = True
            event.listen(session, "after_commit", self._after_commit)
            event.listen(session, "after_rollback", _forget_pending)

    def _after_commit(self, session: Session) -> None:
        for kind, args in session.info.pop(_PENDING, []):
            self.submit(kind, *args)

    def track(self, kind: str, job_id: str, job: Any) -> None:
        """Remember a long job's progress object so later requests of this process can read it."""
        with self._lock:
            self._tracked[(kind, job_id)] = job

    def tracked(self, kind: str, job_id: str) -> Any | None:
        with self._lock:
            return self._tracked.get((kind, job_id))

    def shutdown(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=True)


_PENDING = "vault.jobs.pending"
_HOOKED = "vault.jobs.hooked"


def _forget_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)
