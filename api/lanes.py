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


@dataclasses.dataclass(slots=True)
class _Unit:
    context: contextvars.Context
    fn: Callable[..., Any]
    args: tuple
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class _Worker(threading.Thread):
    """The lane's thread, with the connection and the batch only it touches."""

    def __init__(self, lane: DatabaseLane) -> None:
        super().__init__(name="db-lane", daemon=True)
        self.lane = lane
        self.closing = False
        self.connection: Connection | None = None
        self.group: GroupTransaction | None = None

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
                    answers = self._run_batch(batch)
                except BaseException as exc:  # never leave a request waiting, never let the lane thread die
                    self._discard_connection()  # with whatever transaction and write lock it still holds
                    answers = _unavailable(batch, exc)
                try:
                    _answer(answers)
                except BaseException as exc:
                    log.error("lane could not hand answers back: %s", type(exc).__name__)
        finally:
            if self.connection is not None:
                self.connection.close()
                self.connection = None

    def _run_batch(self, batch: list[_Unit]) -> list[tuple[_Unit, Any, BaseException | None]]:
        try:
            group = self.group = GroupTransaction(self.lane._vault, self._ready_connection())
        except BaseException as exc:
            self._discard_connection()
            return _unavailable(batch, exc)
        done: list[tuple[_Unit, Any, BaseException | None]] = []
        try:
            for unit in batch:
                try:
                    done.append((unit, unit.context.run(unit.fn, *unit.args), None))
                except BaseException as exc:  # the unit's own failure is its answer; the batch goes on
                    done.append((unit, None, exc))
                group.end_unit()
            group.commit()
            return done
        except BaseException as exc:
            # Units not yet run go back to the front of the queue; those run here are answered 503 (their events are
            # not durable).
            with self.lane._ready:
                self.lane._queue.extendleft(reversed(batch[len(done):]))
            try:
                group.rollback()
            except BaseException:
                pass
            # A fresh connection for the next batch: a failed batch may have left this one with statements that a
            # ROLLBACK does not reset (a half-read write cursor), on which no savepoint can be opened again.
            self._discard_connection()
            return _unavailable([unit for unit, _r, _e in done], exc)
        finally:
            self.group = None

    def _ready_connection(self) -> Connection:
        """The kept connection, reopened when it was invalidated. It holds no transaction here: a batch either
        committed, or failed and had its connection discarded."""
        connection = self.connection
        if connection is not None and (connection.closed or connection.invalidated):
            self._discard_connection()
            connection = None
        if connection is None:
            connection = self.connection = self.lane._vault.engine.connect()
        return connection

    def _discard_connection(self) -> None:
        """Close the kept connection for good (its driver connection too, which ends any transaction and lock it
        held); the next batch opens a fresh one."""
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
    def __init__(self, vault: Vault, *, single_thread: bool, max_batch: int = MAX_BATCH) -> None:
        self._vault = vault
        self._single_thread = single_thread
        self.max_batch = max_batch
        self._queue: collections.deque[_Unit] = collections.deque()
        self._ready = threading.Condition()
        self._worker: _Worker | None = None  # started on first use, again after a close (app restart)

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run `fn(*args)` off the event loop: as one unit of the lane's next batch, or in the shared pool when there
        is no lane."""
        if not self._single_thread:
            return await run_in_threadpool(fn, *args)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._ready:
            if self._worker is None or not self._worker.is_alive():
                self._worker = _Worker(self)
                self._worker.start()
            self._queue.append(_Unit(contextvars.copy_context(), fn, args, loop, future))
            self._ready.notify()
        return await future

    def session(self) -> Session:
        """A session for work running in `run`: on the lane, one inside the batch's shared transaction; else a pooled
        session."""
        if not self._single_thread:
            return self._vault.session()
        worker = threading.current_thread()
        if not isinstance(worker, _Worker) or worker.lane is not self or worker.group is None:
            raise RuntimeError("a lane session exists only for work running on the lane")
        return worker.group.session()

    def close(self) -> None:
        """Finish the queued work, stop the thread and close its connection."""
        with self._ready:
            worker, self._worker = self._worker, None
            if worker is None:
                return
            worker.closing = True
            self._ready.notify_all()
        worker.join()
