"""Where a hot request's blocking database work runs: one dedicated thread on SQLite, the shared pool on PostgreSQL.

Owns the SQLite lane. SQLite admits one writer and every audited read writes its audit event, so several threads
serving reads only queue in SQLite's busy handler and pass the GIL back and forth: measured with bench/bench_http.py
on 2 cores, four pool threads cost ~1,780 µs of server CPU per record read where one lane thread costs ~1,000 µs for
the same work (docs/performance.md). The lane runs the hot reads (`as_caller` in api/deps.py) one after another on
one thread, on a connection the lane keeps open (no pool check-out, reset and check-in per read); PostgreSQL, which
takes concurrent writers on different audit chains, keeps the shared thread pool and its connection pool.

Never: runs database work on the event loop itself (a writer holding SQLite's lock — an upload's commit, a CLI
rewrap batch — would then stall every connection, health checks included), or drops the caller's context variables
(the work runs in a copy of them, as the thread pool does).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Connection
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

if TYPE_CHECKING:
    from vault.runtime import Vault

T = TypeVar("T")


class DatabaseLane:
    def __init__(self, vault: Vault, *, single_thread: bool) -> None:
        self._vault = vault
        self._single_thread = single_thread
        self._executor: ThreadPoolExecutor | None = None  # started on first use, again after a close (app restart)
        self._connection: Connection | None = None  # the lane thread's own; never touched from another thread

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run `fn(*args)` off the event loop: on the lane thread, or in the shared pool when there is no lane."""
        if not self._single_thread:
            return await run_in_threadpool(fn, *args)
        executor = self._executor
        if executor is None:
            executor = self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-lane")
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(context.run, fn, *args))

    def session(self) -> Session:
        """A session for work running in `run`: on the lane, bound to the lane's connection (reopened if it was
        invalidated); else a pooled session.

        The lane's connection never goes back to the pool, so it does what the pool's reset-on-return would: a
        transaction a failed request left open is rolled back at both levels — SQLAlchemy's, and the driver's (a
        COMMIT that SQLite refused leaves the driver in a transaction SQLAlchemy no longer knows about, holding the
        write lock)."""
        if not self._single_thread:
            return self._vault.session()
        connection = self._connection
        if connection is not None and (connection.closed or connection.invalidated):
            connection.close()
            connection = None
        if connection is None:
            connection = self._connection = self._vault.engine.connect()
        else:
            if connection.in_transaction():
                connection.rollback()
            driver = connection.connection.dbapi_connection
            if getattr(driver, "in_transaction", False):
                driver.rollback()
        return self._vault.sessions(bind=connection)

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.submit(self._close_connection).result()
            executor.shutdown(wait=True)
