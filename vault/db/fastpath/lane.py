"""The SQLite read fast path: hot reads run in batches on the event loop, their audit events written together.

Owns where a hot request's database work runs. On SQLite (one writer, and every audited read writes its audit event)
the reads queued in one turn of the event loop (up to `MAX_BATCH`) run one after another on a connection the loop
keeps, inside one write transaction (`BEGIN IMMEDIATE`). A read's audit events are not written when it appends them:
they are kept as values (`audit.trail.Deferred`), handed to the batch when the read's session commits, dropped when it
rolls back. After the last read the batch links and hashes them onto their chains in memory and writes them with one
multi-row insert (`audit.trail.append_linked`), then COMMITs once; only then is any request of the batch answered.
Running on the loop itself, instead of on a thread of its own, saves the thread hand-offs and the GIL's back and forth
between two busy threads (docs/performance.md). PostgreSQL takes concurrent writers on different audit chains, so it
keeps the shared thread pool and its connection pool, one transaction per read (`run` is `run_in_threadpool` there).

Never: answers a request before the COMMIT that holds its audit events has succeeded. A batch whose COMMIT, event
write or transaction fails answers every request in it with AuditUnavailable (503), whatever each read returned.
Never links events outside a transaction that holds SQLite's write lock, so a chain cannot fork. Never waits for a lock
on the event loop: the loop's connection has no busy timeout, so a batch that finds the write lock taken (an upload's
commit, the audit checkpointer, a CLI rewrap batch) is tried again a little later while the loop goes on serving,
health checks included; after `LOCK_WAIT_SECONDS` it answers 503. Never returns that connection to the pool: it is
closed for good. Never drops the caller's context variables: each unit runs in a copy of them, as the thread pool
does. What a read writes besides its audit events (a token's last-seen time) joins the batch's transaction without a
savepoint of its own: the hot reads write nothing that their own failure must undo.
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

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from audit import trail
from vault.db.fastpath.statements import driver_error
from vault.errors import AuditUnavailable

if TYPE_CHECKING:
    from vault.runtime import Vault

T = TypeVar("T")
log = logging.getLogger("healthvault.db.fastpath")

# Reads in one shared transaction. A batch holds SQLite's write lock from its BEGIN to its COMMIT, and the event loop
# too, so this also bounds how long another writer (an upload's commit) and the loop's other requests wait behind it.
MAX_BATCH = 32
# How an event loop waits for SQLite's write lock when another writer holds it: it tries again after a pause that
# grows from 1 to 25 ms, and answers 503 after 10 s, like the busy timeout of every other connection (vault/db/engine).
LOCK_RETRY_MIN, LOCK_RETRY_MAX, LOCK_WAIT_SECONDS = 0.001, 0.025, 10.0
# Every this many batches an event loop has the WAL checkpointed on a thread (its own connection never does it).
CHECKPOINT_EVERY = 32
_SQLITE_BUSY = 5  # the primary result code; extended codes (BUSY_RECOVERY, ...) keep it in their low byte

Answer = tuple["_Unit", Any, "BaseException | None"]


class LockTaken(Exception):
    """BEGIN IMMEDIATE found SQLite's write lock held by another connection. Nothing was begun."""


class TransactionLost(Exception):
    """The batch's transaction is no longer open (SQLite ended it by itself, or a read rolled it back)."""


class _UnitSession(Session):
    """A read's session: it joins the batch's transaction (no savepoint; a rollback ends the batch's transaction, which
    the batch then refuses to commit). Its audit events are values (`trail.DEFER_KEY`): its commit hands them to the
    batch, its rollback drops them."""


event.listen(_UnitSession, "after_commit", trail.take_committed)
event.listen(_UnitSession, "after_soft_rollback", trail.forget_pending)


@dataclasses.dataclass(slots=True)
class _Unit:
    context: contextvars.Context
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    since: float  # when it was queued (its own wait for the write lock counts from here)


class _Batch:
    """One write transaction on a kept connection, and the audit events its reads committed."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.held: list[trail.Deferred] = []
        self.transaction = connection.begin()
        try:
            try:
                self._driver().execute("BEGIN IMMEDIATE")
            except connection.dialect.loaded_dbapi.OperationalError as error:
                if getattr(error, "sqlite_errorcode", 0) & 0xFF == _SQLITE_BUSY:
                    raise LockTaken() from None
                raise driver_error("BEGIN IMMEDIATE", error, connection.dialect) from error
        except BaseException:
            self.transaction.rollback()
            raise

    def _driver(self) -> Any:
        return self.connection.connection.dbapi_connection

    def session(self) -> Session:
        return _UnitSession(bind=self.connection, join_transaction_mode="rollback_only", expire_on_commit=False,
                            info={trail.DEFER_KEY: True, trail.HELD_KEY: self.held})

    def commit(self) -> list[dict[str, Any]]:
        """Link and write the held events, COMMIT; returns their exported views (for the sink).

        A transaction that pysqlite began anew at a read's write, after SQLite had ended the batch's by itself, may be
        committed: the events are linked onto heads read inside it, and SQLite refuses its writes if another writer
        committed since its snapshot; only the reads' other writes from before that rollback (a token's last-seen
        time) are lost."""
        if not self.transaction.is_active or not self._driver().in_transaction:
            raise TransactionLost()
        views = trail.append_linked(self.connection, self.held)
        self.transaction.commit()
        return views

    def rollback(self) -> None:
        """Undo everything, at SQLAlchemy's level and the driver's (a refused COMMIT leaves the driver in the
        transaction, holding the write lock)."""
        try:
            if self.transaction.is_active:
                self.transaction.rollback()
        finally:
            if not self.connection.closed and not self.connection.invalidated and self._driver().in_transaction:
                self._driver().rollback()


class _LoopRunner:
    """Runs the reads queued on one event loop, on that loop, in batches: the reads that arrive in the same loop
    iteration share one. Audit events go to the sink on a thread of their own (its socket I/O must not stall the
    loop), and the WAL is checkpointed on a pool thread."""

    def __init__(self, lane: DatabaseLane, loop: asyncio.AbstractEventLoop) -> None:
        self.lane = lane
        self.loop = loop
        self.queue: collections.deque[_Unit] = collections.deque()
        self.pending: asyncio.Handle | None = None  # the scheduled drain, if any
        self.closed = False
        self.locked_since: float | None = None  # when the write lock was first found taken, while it still is
        self.connection: Connection | None = None
        self.batches = 0
        self.checkpointing = False

    def submit(self, unit: _Unit) -> None:
        self.queue.append(unit)
        if self.pending is None:
            self.pending = self.loop.call_soon(self.drain)

    def drain(self) -> None:
        self.pending = None
        if self.closed:
            return
        units = [self.queue.popleft() for _ in range(min(self.lane.max_batch, len(self.queue)))]
        answers = self.run_batch(units, nowait=True)
        if answers is None:  # the write lock is taken: try again a little later
            self.queue.extendleft(reversed(units))
            self._again_later()
            return
        _settle(answers)
        self.locked_since = None
        if self.queue:
            self.pending = self.loop.call_soon(self.drain)
        self.batches += 1
        if self.batches % CHECKPOINT_EVERY == 0:
            self._checkpoint()

    def run_batch(self, units: list[_Unit], *, nowait: bool) -> list[Answer] | None:
        """Each unit's answer, or None when the lock was taken (`nowait`) and nothing ran."""
        try:
            batch = _Batch(self._ready_connection(nowait))
        except LockTaken:
            return None
        except BaseException as exc:  # noqa: BLE001 - whatever stopped the BEGIN, every read is answered 503
            self.discard_connection()
            return _unavailable(units, exc)
        done: list[Answer] = []
        self.lane._current.batch = batch  # lane.session() hands out its sessions
        try:
            for unit in units:
                try:
                    done.append((unit, unit.context.run(unit.fn, *unit.args), None))
                except BaseException as exc:  # noqa: BLE001 - the unit's own failure is its answer; the batch goes on
                    done.append((unit, None, exc))
            views = batch.commit()
        except BaseException as exc:  # noqa: BLE001 - whatever stopped the COMMIT, every read is answered 503
            try:
                batch.rollback()
            except BaseException as undo:  # noqa: BLE001 - the connection is discarded next, which ends it anyway
                log.warning("fast path batch not rolled back: %s", type(undo).__name__)
            self.discard_connection()  # a fresh connection for the next batch
            return _unavailable(units, exc)
        finally:
            self.lane._current.batch = None
        try:
            self.lane._forward_off_loop(views)
        except Exception as exc:  # noqa: BLE001 - the events are committed: the reads are answered all the same
            log.error("committed audit events not forwarded: %s", type(exc).__name__)
        return done

    def _ready_connection(self, nowait: bool) -> Connection:
        connection = self.connection
        if connection is not None and (connection.closed or connection.invalidated):
            self.discard_connection()
            connection = None
        if connection is None:
            connection = self.connection = self.lane._vault.engine.connect()
            if nowait:  # never wait for the write lock on the loop, never checkpoint inside a loop's COMMIT
                driver: Any = connection.connection.dbapi_connection
                driver.execute("PRAGMA busy_timeout=0")
                driver.execute("PRAGMA wal_autocheckpoint=0")
        return connection

    def discard_connection(self) -> None:
        """Close the kept connection for good (its driver connection too, which ends any transaction and lock it
        held, and never returns a connection without a busy timeout to the pool)."""
        connection, self.connection = self.connection, None
        if connection is None:
            return
        try:
            if not connection.closed:
                connection.invalidate()
        except Exception as exc:  # noqa: BLE001 - closing it below still gives it up
            log.error("fast path connection not invalidated: %s", type(exc).__name__)
        finally:
            connection.close()

    def _again_later(self) -> None:
        now = self.loop.time()
        if self.locked_since is None:
            self.locked_since = now
        expired = [unit for unit in self.queue if now - unit.since > LOCK_WAIT_SECONDS]
        if expired:
            self.queue = collections.deque(unit for unit in self.queue if now - unit.since <= LOCK_WAIT_SECONDS)
            _settle(_unavailable(expired, TimeoutError("SQLite's write lock stayed taken")))
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

    def _checkpointed(self, done: asyncio.Future[None]) -> None:
        self.checkpointing = False
        if not done.cancelled() and done.exception() is not None:
            log.warning("WAL checkpoint failed: %s", type(done.exception()).__name__)

    def finish(self) -> None:
        """Stop for good: run what is still queued on a connection that waits for the lock (the loop is ending or
        stopping), and close the connection. Runs on the runner's own loop, or when that loop no longer runs."""
        self.closed = True
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        self.discard_connection()
        try:
            while self.queue:
                units = [self.queue.popleft() for _ in range(min(self.lane.max_batch, len(self.queue)))]
                _settle(self.run_batch(units, nowait=False) or _unavailable(units, LockTaken()))
        finally:
            self.discard_connection()


def _checkpoint_wal(engine: Engine) -> None:
    """A passive checkpoint: it copies what it can without waiting for readers or writers."""
    with engine.connect() as connection:
        driver: Any = connection.connection.dbapi_connection
        driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _unavailable(units: list[_Unit], cause: BaseException) -> list[Answer]:
    log.error("audited batch of %d read(s) not committed: %s", len(units), type(cause).__name__)
    answers: list[Answer] = []
    for unit in units:
        error = AuditUnavailable()
        error.__cause__ = cause
        answers.append((unit, None, error))
    return answers


def _settle(answers: list[Answer]) -> None:
    """Each unit's future on its own: one that cannot take its answer must not leave the rest of the batch waiting."""
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
                wrapped = RuntimeError(f"fast path unit raised {type(error).__name__}")
                wrapped.__cause__ = error
                future.set_exception(wrapped)
        except Exception as exc:  # noqa: BLE001 - the other answers of the batch must still be delivered
            log.error("fast path answer not delivered: %s", type(exc).__name__)


class DatabaseLane:
    """The one seam of the read fast path: `run` a unit of work, and inside it take its `session`."""

    def __init__(self, vault: Vault, *, single_thread: bool, max_batch: int = MAX_BATCH) -> None:
        self._vault = vault
        self._single_thread = single_thread  # SQLite: batches on the loop; else the shared pool
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._runners: dict[asyncio.AbstractEventLoop, _LoopRunner] = {}
        self._current = threading.local()  # .batch: the batch running on this thread, if any
        self._forwarder: concurrent.futures.ThreadPoolExecutor | None = None  # the sink's thread

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` as one unit of a batch on this event loop (SQLite), or in the shared pool (PostgreSQL);
        answered only once its audit events are committed."""
        if not self._single_thread:
            return await run_in_threadpool(fn, *args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        runner = self._runners.get(loop)
        if runner is None or runner.closed:
            runner = self._new_runner(loop)
        runner.submit(_Unit(contextvars.copy_context(), fn, args, future, loop.time()))
        return await future

    def session(self) -> Session:
        """A session for work running in `run`: in a batch, the read's own session in the batch's transaction; else a
        pooled session."""
        if not self._single_thread:
            return self._vault.session()
        batch: _Batch | None = getattr(self._current, "batch", None)
        if batch is None:
            raise RuntimeError("a fast path session exists only for work running in the fast path")
        return batch.session()

    def _new_runner(self, loop: asyncio.AbstractEventLoop) -> _LoopRunner:
        """A runner for this loop; the runners of loops that have closed since give back their connections."""
        with self._lock:
            gone = [other for other in self._runners if other.is_closed()]
            runner = self._runners[loop] = _LoopRunner(self, loop)
        for other in gone:
            self._runners.pop(other).finish()
        return runner

    def _forward_off_loop(self, events: list[dict[str, Any]]) -> None:
        """Hand committed events to the sink on one thread of their own, in commit order."""
        if not events or self._vault.audit_sink is None:
            return
        with self._lock:
            if self._forwarder is None:
                self._forwarder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="audit-forward")
            forwarder = self._forwarder
        forwarder.submit(self._vault.forward_audit_events, events)

    def close(self) -> None:
        """Run what is queued, close the connections and stop the sink's thread (at the app's lifespan end)."""
        with self._lock:
            runners, self._runners = list(self._runners.values()), {}
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for runner in runners:
            if runner.loop is current or not runner.loop.is_running():
                runner.finish()
            else:  # another loop still turns: its runner finishes there, between two batches
                concurrent.futures.wait([asyncio.run_coroutine_threadsafe(_finish(runner), runner.loop)], timeout=30)
        with self._lock:
            forwarder, self._forwarder = self._forwarder, None
        if forwarder is not None:
            forwarder.shutdown(wait=True)  # the events of every committed batch reach the sink


async def _finish(runner: _LoopRunner) -> None:
    runner.finish()
