"""Where a hot request's blocking database work runs: one dedicated thread on SQLite, the shared pool on PostgreSQL.

Owns the SQLite lane. SQLite admits one writer, and every audited read writes its audit event. Several threads serving
reads would only queue in SQLite's busy handler and pass the GIL back and forth. The lane is one thread with a
connection it keeps. It takes the reads queued since its last batch (up to `MAX_BATCH`) and runs them one after
another in one shared write transaction, each read in its own savepoint (`vault.group_commit`). It commits once, then
answers every request of the batch in one hand-off to the event loop. Measured with bench/bench_http.py on 2 cores,
this costs a third less server CPU per read than one transaction and one hand-off per read (docs/performance.md).
PostgreSQL takes concurrent writers on different audit chains, so it keeps the shared thread pool and its connection
pool, one transaction per read.

Never: answers a request before the shared commit that holds its audit event has succeeded. A batch whose commit fails
answers every request in it with AuditUnavailable (503). Never runs database work on the event loop itself: a writer
holding SQLite's lock (an upload's commit, a CLI rewrap batch) would then stall every connection, health checks
included. Never drops the caller's context variables: each unit runs in a copy of them, as the thread pool does.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from vault.errors import AuditUnavailable
from vault.group_commit import GroupTransaction

if TYPE_CHECKING:
    from vault.runtime import Vault

T = TypeVar("T")
log = logging.getLogger("healthvault.api.lane")

# Reads in one shared transaction. The lane holds SQLite's write lock for a whole batch, so this also bounds how
# long another writer (an upload's commit) waits behind it: at ~0.5-1.5 ms per read, 16-48 ms.
MAX_BATCH = 32
# How an event loop waits for SQLite's write lock when another writer holds it: it tries again after a pause that
# grows from 1 to 25 ms, and answers 503 after 10 s, like the busy timeout of every other connection (vault/db.py).
LOCK_RETRY_MIN, LOCK_RETRY_MAX, LOCK_WAIT_SECONDS = 0.001, 0.025, 10.0


@dataclasses.dataclass(slots=True)
class _Unit:
    context: contextvars.Context
    fn: Callable[..., Any]
    args: tuple
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class _Executor:
    """A kept connection and the batch running on it: the worker thread has one, and so has each event loop.

    `nowait`: the connection never waits for SQLite's write lock (busy timeout 0). A batch that cannot take the lock
    at once is handed back unrun, for the worker thread, which waits for it."""

    def __init__(self, lane: DatabaseLane, *, nowait: bool) -> None:
        self.lane = lane
        self.nowait = nowait
        self.connection: Connection | None = None

    def run_batch(self, batch: list[_Unit]) -> tuple[list[tuple[_Unit, Any, BaseException | None]], list[_Unit]]:
        """(answers, units not run). Units not run went back unanswered: the lock was taken, or the shared
        transaction failed before their turn."""
        try:
            group = GroupTransaction(self.lane._vault, self._ready_connection())
        except BaseException as exc:
            self.discard_connection()
            if self.nowait:
                return [], batch
            return _unavailable(batch, exc), []
        done: list[tuple[_Unit, Any, BaseException | None]] = []
        self.lane._current.group = group
        try:
            for unit in batch:
                try:
                    done.append((unit, unit.context.run(unit.fn, *unit.args), None))
                except BaseException as exc:  # the unit's own failure is its answer; the batch goes on
                    done.append((unit, None, exc))
                group.end_unit()
            group.commit()
            return done, []
        except BaseException as exc:
            # Those run here are answered 503 (their events are not durable); the rest go back.
            try:
                group.rollback()
            except BaseException:
                pass
            # A fresh connection for the next batch: a failed batch may have left this one with statements that a
            # ROLLBACK does not reset (a half-read write cursor), on which no savepoint can be opened again.
            self.discard_connection()
            return _unavailable([unit for unit, _r, _e in done], exc), batch[len(done):]
        finally:
            self.lane._current.group = None

    def _ready_connection(self) -> Connection:
        """The kept connection, reopened when it was invalidated. It holds no transaction here: a batch either
        committed, or failed and had its connection discarded."""
        connection = self.connection
        if connection is not None and (connection.closed or connection.invalidated):
            self.discard_connection()
            connection = None
        if connection is None:
            connection = self.connection = self.lane._vault.engine.connect()
            if self.nowait:
                connection.connection.dbapi_connection.execute("PRAGMA busy_timeout=0")
        return connection

    def discard_connection(self) -> None:
        """Close the kept connection for good (its driver connection too, which ends any transaction and lock it
        held, and never returns a connection without a busy timeout to the pool); the next batch opens a fresh
        one."""
        connection, self.connection = self.connection, None
        if connection is None:
            return
        try:
            if not connection.closed:
                connection.invalidate()
        except Exception as exc:
            log.error("lane connection not invalidated: %s", type(exc).__name__)
        finally:
            connection.close()


class _Worker(threading.Thread):
    """The lane's thread: runs what the event loops could not (the write lock was taken), waiting for the lock."""

    def __init__(self, lane: DatabaseLane) -> None:
        super().__init__(name="db-lane", daemon=True)
        self.lane = lane
        self.closing = False
        self.executor = _Executor(lane, nowait=False)

    def run(self) -> None:
        lane = self.lane
        try:
            while True:
                with lane._ready:
                    while not lane._queue and not self.closing:
                        lane._ready.wait()
                    if not lane._queue:
                        return
                    batch = [lane._queue.popleft() for _ in range(min(lane.max_batch, len(lane._queue)))]
                try:
                    answers, unrun = self.executor.run_batch(batch)
                except BaseException as exc:  # never leave a request waiting, never let the lane thread die
                    self.executor.discard_connection()  # with whatever transaction and write lock it still holds
                    answers, unrun = _unavailable(batch, exc), []
                if unrun:
                    with lane._ready:
                        lane._queue.extendleft(reversed(unrun))
                try:
                    _answer(answers)
                except BaseException as exc:
                    log.error("lane could not hand answers back: %s", type(exc).__name__)
        finally:
            self.executor.discard_connection()


class _LoopRunner:
    """Runs the reads queued on one event loop, on that loop.

    The units the request tasks queue are run by one callback scheduled after them, so the reads that arrive in the
    same loop iteration share a batch. The loop never waits for SQLite's write lock: its connection has no busy
    timeout, and while another writer holds the lock (an upload's commit, a CLI rewrap) the batch is tried again a
    little later, the loop serving other requests in between, until `LOCK_WAIT_SECONDS` have passed."""

    def __init__(self, lane: DatabaseLane, loop: asyncio.AbstractEventLoop) -> None:
        self.lane = lane
        self.loop = loop
        self.queue: collections.deque[_Unit] = collections.deque()
        self.scheduled = False
        self.locked_since: float | None = None  # when the write lock was first found taken, while it still is
        self.executor = _Executor(lane, nowait=True)

    def submit(self, unit: _Unit) -> None:
        self.queue.append(unit)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.drain)

    def drain(self) -> None:
        self.scheduled = False
        batch = [self.queue.popleft() for _ in range(min(self.lane.max_batch, len(self.queue)))]
        try:
            answers, unrun = self.executor.run_batch(batch)
        except BaseException as exc:  # never leave a request waiting, never unwind the event loop
            self.executor.discard_connection()
            answers, unrun = _unavailable(batch, exc), []
        _settle([(unit.future, result, error) for unit, result, error in answers])
        if unrun:
            self.queue.extendleft(reversed(unrun))
            self._again_later()
        else:
            self.locked_since = None
            if self.queue:
                self.scheduled = True
                self.loop.call_soon(self.drain)

    def _again_later(self) -> None:
        now = self.loop.time()
        if self.locked_since is None:
            self.locked_since = now
        waited = now - self.locked_since
        if waited > LOCK_WAIT_SECONDS:
            units, self.queue, self.locked_since = list(self.queue), collections.deque(), None
            answers = _unavailable(units, TimeoutError("SQLite's write lock stayed taken"))
            _settle([(unit.future, result, error) for unit, result, error in answers])
            return
        self.scheduled = True
        self.loop.call_later(min(LOCK_RETRY_MAX, LOCK_RETRY_MIN + waited / 2), self.drain)

    def close(self) -> list[_Unit]:
        """Stop; the units still queued are returned for the worker thread."""
        self.executor.discard_connection()
        units, self.queue = list(self.queue), collections.deque()
        return units


def _unavailable(units: list[_Unit], cause: BaseException) -> list[tuple[_Unit, Any, BaseException | None]]:
    log.error("audited batch of %d read(s) not committed: %s", len(units), type(cause).__name__)
    answers = []
    for unit in units:
        error = AuditUnavailable()
        error.__cause__ = cause
        answers.append((unit, None, error))
    return answers


def _answer(answers: list[tuple[_Unit, Any, BaseException | None]]) -> None:
    """Settle each request's future on its own event loop, one hand-off per loop for the whole batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for unit, result, error in answers:
        by_loop.setdefault(unit.loop, []).append((unit.future, result, error))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:  # that loop has closed: nobody is waiting any more
            pass


def _settle(settled: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    """Each future on its own: one that cannot take its answer must not leave the rest of the batch waiting."""
    for future, result, error in settled:
        if future.done():  # the request was cancelled (client gone) while its unit ran
            continue
        try:
            if error is None:
                future.set_result(result)
            elif isinstance(error, Exception) and not isinstance(error, StopIteration):
                future.set_exception(error)
            else:  # StopIteration cannot cross a future, and an interrupt must not unwind the event loop
                wrapped = RuntimeError(f"lane unit raised {type(error).__name__}")
                wrapped.__cause__ = error
                future.set_exception(wrapped)
        except Exception as exc:
            log.error("lane answer not delivered: %s", type(exc).__name__)


class DatabaseLane:
    def __init__(self, vault: Vault, *, single_thread: bool, on_loop: bool = False,
                 max_batch: int = MAX_BATCH) -> None:
        self._vault = vault
        self._single_thread = single_thread
        self._on_loop = single_thread and on_loop
        self.max_batch = max_batch
        self._queue: collections.deque[_Unit] = collections.deque()
        self._ready = threading.Condition()
        self._worker: _Worker | None = None  # started on first use, again after a close (app restart)
        self._runners: dict[asyncio.AbstractEventLoop, _LoopRunner] = {}
        self._current = threading.local()  # .group: the group transaction running on this thread, if any

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run `fn(*args)` as one unit of a batch (on this event loop when the write lock is free, else on the lane
        thread), or in the shared pool when there is no lane."""
        if not self._single_thread:
            return await run_in_threadpool(fn, *args)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        unit = _Unit(contextvars.copy_context(), fn, args, loop, future)
        if self._on_loop:
            runner = self._runners.get(loop)
            if runner is None:
                runner = self._runners[loop] = _LoopRunner(self, loop)
            runner.submit(unit)
        else:
            self._to_worker([unit])
        return await future

    def _to_worker(self, units: list[_Unit]) -> None:
        with self._ready:
            if self._worker is None or not self._worker.is_alive():
                self._worker = _Worker(self)
                self._worker.start()
            self._queue.extend(units)
            self._ready.notify()

    def session(self) -> Session:
        """A session for work running in `run`: on the lane, one inside the batch's shared transaction; else a pooled
        session."""
        if not self._single_thread:
            return self._vault.session()
        group = getattr(self._current, "group", None)
        if group is None:
            raise RuntimeError("a lane session exists only for work running on the lane")
        return group.session()

    def close(self) -> None:
        """Finish the queued work, stop the thread and close the connections."""
        runners, self._runners = list(self._runners.values()), {}
        leftover = [unit for runner in runners for unit in runner.close()]
        if leftover:
            self._to_worker(leftover)
        with self._ready:
            worker, self._worker = self._worker, None
            if worker is None:
                return
            worker.closing = True
            self._ready.notify_all()
        worker.join()
