"""Where a hot request's database work runs: in batches on the event loop (SQLite), or in the shared pool (PostgreSQL).

Owns the SQLite lane. SQLite admits one writer, and every audited read writes its audit event. The reads queued in one
turn of the event loop (up to `MAX_BATCH`) run one after another in one shared write transaction, each read in its own
savepoint (`vault.group_commit`), on a connection the loop keeps; one COMMIT, then every request of the batch is
answered. Running them on the loop itself, instead of on a thread of their own, saves the thread hand-offs and the
GIL's back and forth between two busy threads: measured with bench/bench_http.py on 2 cores, about a fifth of the
server CPU per read (docs/performance.md). The lane thread (`_Worker`) runs the same batches for a lane built with
`on_loop=False`, and runs what is still queued when the lane closes. PostgreSQL takes concurrent writers on different
audit chains, so it keeps the shared thread pool and its connection pool, one transaction per read.

Never: answers a request before the shared commit that holds its audit event has succeeded. A batch whose commit fails
answers every request in it with AuditUnavailable (503). Never waits for a lock on the event loop: the loop's
connection has no busy timeout, so a batch that finds SQLite's write lock taken (an upload's commit, the audit
checkpointer, a CLI rewrap batch) is tried again a little later while the loop goes on serving, health checks
included; after `LOCK_WAIT_SECONDS` it answers 503. Never returns that connection to the pool: it is closed for good.
Never drops the caller's context variables: each unit runs in a copy of them, as the thread pool does.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from vault.db.fastpath.group_commit import GroupTransaction, LockTaken
from vault.errors import AuditUnavailable

if TYPE_CHECKING:
    from vault.runtime import Vault

T = TypeVar("T")
log = logging.getLogger("healthvault.api.lane")

# Reads in one shared transaction. A batch holds SQLite's write lock from its BEGIN to its COMMIT, and on the event
# loop it holds the loop too, so this also bounds how long another writer (an upload's commit) and the loop's other
# requests wait behind it: at ~0.4-1 ms per read, ~13-30 ms.
MAX_BATCH = 32
# How an event loop waits for SQLite's write lock when another writer holds it: it tries again after a pause that
# grows from 1 to 25 ms, and answers 503 after 10 s, like the busy timeout of every other connection (vault/db.py).
LOCK_RETRY_MIN, LOCK_RETRY_MAX, LOCK_WAIT_SECONDS = 0.001, 0.025, 10.0
# Every this many batches an event loop has the WAL checkpointed on a thread (its own connection never does it).
CHECKPOINT_EVERY = 32


@dataclasses.dataclass(slots=True)
class _Unit:
    context: contextvars.Context
    fn: Callable[..., Any]
    args: tuple
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    since: float = 0.0  # when an event loop queued it (its own wait for the write lock counts from here)


class _Executor:
    """A kept connection and the batch running on it: the worker thread has one, and so has each event loop.

    `nowait` (the event loop's): the connection never waits for SQLite's write lock (busy timeout 0), and never
    checkpoints the WAL inside a COMMIT (the loop has that done on a thread, `_LoopRunner._checkpoint`). A batch that
    cannot take the lock at once is handed back unrun."""

    def __init__(self, lane: DatabaseLane, *, nowait: bool,
                 forward: Callable[[list[dict]], None] | None = None) -> None:
        self.lane = lane
        self.nowait = nowait
        self.forward = forward  # where committed audit events go (default: the vault's sink, on this thread)
        self.connection: Connection | None = None

    def run_batch(self, batch: list[_Unit]) -> tuple[list[tuple[_Unit, Any, BaseException | None]], list[_Unit]]:
        """(answers, units not run). Units not run went back unanswered: the write lock was taken (`nowait`), or the
        shared transaction failed before their turn."""
        try:
            group = GroupTransaction(self.lane._vault, self._ready_connection(), forward=self.forward)
        except LockTaken:  # only without a busy timeout; the connection stays good
            return [], batch
        except BaseException as exc:
            self.discard_connection()
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
                driver = connection.connection.dbapi_connection
                driver.execute("PRAGMA busy_timeout=0")
                driver.execute("PRAGMA wal_autocheckpoint=0")
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
    """The lane's thread, for a lane built with `on_loop=False` (and for what is still queued when a lane closes):
    runs the same batches on a connection that waits for the write lock in SQLite's busy handler."""

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
    timeout, and while another writer holds the lock (an upload's commit, the audit checkpointer, a CLI rewrap) the
    batch is tried again a little later, the loop serving other requests in between. A read that has waited
    `LOCK_WAIT_SECONDS` for the lock is answered 503. Audit events go to the sink on a thread of their own (the
    sink's socket I/O must not stall the loop), and the WAL is checkpointed on a pool thread."""

    def __init__(self, lane: DatabaseLane, loop: asyncio.AbstractEventLoop) -> None:
        self.lane = lane
        self.loop = loop
        self.queue: collections.deque[_Unit] = collections.deque()
        self.pending: asyncio.Handle | asyncio.TimerHandle | None = None  # the scheduled drain, if any
        self.closed = False
        self.locked_since: float | None = None  # when the write lock was first found taken, while it still is
        self.executor = _Executor(lane, nowait=True, forward=lane._forward_off_loop)
        self.batches = 0
        self.checkpointing = False

    def submit(self, unit: _Unit) -> None:
        unit.since = self.loop.time()
        self.queue.append(unit)
        if self.pending is None:
            self.pending = self.loop.call_soon(self.drain)

    def drain(self) -> None:
        self.pending = None
        if self.closed:
            return
        batch = [self.queue.popleft() for _ in range(min(self.lane.max_batch, len(self.queue)))]
        try:
            answers, unrun = self.executor.run_batch(batch)
        except BaseException as exc:  # never leave a request waiting, never unwind the event loop
            self.executor.discard_connection()
            answers, unrun = _unavailable(batch, exc), []
        _settle(answers)
        if unrun:
            self.queue.extendleft(reversed(unrun))
            self._again_later()
            return
        self.locked_since = None
        if self.queue:
            self.pending = self.loop.call_soon(self.drain)
        self.batches += 1
        if self.batches % CHECKPOINT_EVERY == 0:
            self._checkpoint()

    def _again_later(self) -> None:
        now = self.loop.time()
        if self.locked_since is None:
            self.locked_since = now
        expired = [unit for unit in self.queue if now - unit.since > LOCK_WAIT_SECONDS]
        if expired:
            self.queue = collections.deque(unit for unit in self.queue if now - unit.since <= LOCK_WAIT_SECONDS)
            answers = _unavailable(expired, TimeoutError("SQLite's write lock stayed taken"))
            _settle(answers)
        if self.queue:
            self.pending = self.loop.call_later(min(LOCK_RETRY_MAX, LOCK_RETRY_MIN + (now - self.locked_since) / 2),
                                                self.drain)
        else:
            self.locked_since = None

    def _checkpoint(self) -> None:
        """Copy the WAL back into the database file on a pool thread. SQLite would otherwise do it inside the COMMIT
        that crosses 1,000 WAL pages, on the loop: measured 15-20 ms with every connection waiting."""
        if self.checkpointing:
            return
        try:
            done = self.loop.run_in_executor(None, _checkpoint_wal, self.lane._vault.engine)
        except RuntimeError:  # the loop's executor has shut down: the loop is ending
            return
        self.checkpointing = True
        done.add_done_callback(self._checkpointed)

    def _checkpointed(self, done: asyncio.Future) -> None:
        self.checkpointing = False
        if not done.cancelled() and done.exception() is not None:
            log.warning("WAL checkpoint failed: %s", type(done.exception()).__name__)

    def close(self) -> list[_Unit]:
        """Stop for good (a drain already scheduled does nothing) and close the connection; the units still queued
        are returned. Runs on the runner's own loop, or when that loop no longer runs."""
        self.closed = True
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        self.executor.discard_connection()
        units, self.queue = list(self.queue), collections.deque()
        return units


def _checkpoint_wal(engine) -> None:
    """A passive checkpoint: it copies what it can without waiting for readers or writers."""
    with engine.connect() as connection:
        connection.connection.dbapi_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


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
    for answer in answers:
        by_loop.setdefault(answer[0].loop, []).append(answer)
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:  # that loop has closed: nobody is waiting any more
            pass


def _settle(answers: list[tuple[_Unit, Any, BaseException | None]]) -> None:
    """Each unit's future on its own (on its loop): one that cannot take its answer must not leave the rest of the
    batch waiting."""
    for unit, result, error in answers:
        future = unit.future
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
        self._forwarder: concurrent.futures.ThreadPoolExecutor | None = None  # the sink's thread, for the loops

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run `fn(*args)` as one unit of a batch (on this event loop, or on the lane thread for a lane built with
        `on_loop=False`), or in the shared pool when there is no lane (PostgreSQL)."""
        if not self._single_thread:
            return await run_in_threadpool(fn, *args)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        unit = _Unit(contextvars.copy_context(), fn, args, loop, future)
        if self._on_loop:
            runner = self._runners.get(loop)
            if runner is None:
                runner = self._new_runner(loop)
            runner.submit(unit)
        else:
            self._to_worker([unit])
        return await future

    def _new_runner(self, loop: asyncio.AbstractEventLoop) -> _LoopRunner:
        """A runner for this loop; the runners of loops that have closed since give back their connections."""
        with self._ready:
            for gone in [other for other in self._runners if other.is_closed()]:
                self._runners.pop(gone).close()
            runner = self._runners[loop] = _LoopRunner(self, loop)
        return runner

    def _forward_off_loop(self, events: list[dict]) -> None:
        """Hand committed events to the sink on one thread of their own, in commit order."""
        if not events or self._vault.audit_sink is None:
            return
        with self._ready:
            if self._forwarder is None:
                self._forwarder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="audit-forward")
            forwarder = self._forwarder
        forwarder.submit(self._vault.forward_audit_events, events)

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
        """Finish the queued work, stop the threads and close the connections (at the app's lifespan end, on its
        loop)."""
        with self._ready:
            runners, self._runners = list(self._runners.values()), {}
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        leftover: list[_Unit] = []
        for runner in runners:
            if runner.loop is current or not runner.loop.is_running():
                leftover += runner.close()
            else:  # another loop still turns: its runner stops there, between two batches
                runner.loop.call_soon_threadsafe(lambda runner=runner: self._to_worker(runner.close()))
        if leftover:
            self._to_worker(leftover)
        with self._ready:
            worker, self._worker = self._worker, None
            forwarder, self._forwarder = self._forwarder, None
            if worker is not None:
                worker.closing = True
                self._ready.notify_all()
        if worker is not None:
            worker.join()
        if forwarder is not None:
            forwarder.shutdown(wait=True)  # the events of every committed batch reach the sink
