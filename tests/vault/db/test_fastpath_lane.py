"""The database lane (api/lanes.py) and its group commit (vault/group_commit.py).

On SQLite: one thread and one kept connection; queued reads share one transaction, each in its own savepoint; no
request is answered before the commit that holds its audit event; a unit's failure or leftover stays its own; a
failed or lost shared transaction answers every unit it carried with AuditUnavailable. On PostgreSQL: the shared
pool and pooled sessions."""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
import threading
import time

import pytest
from sqlalchemy import bindparam, event, func, select, text, update

from audit.models import AuditEvent, ChainHead
from tests.conftest import require_pg
from tests.helpers import SinkListener, login, png_bytes, register, upload
from tests.helpers.chains import check_chains
from tests.helpers.events import append_tagged_event
from vault.db.fastpath.lane import DatabaseLane
from vault.errors import AuditUnavailable, NotFound

_seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen")
_MOVE = update(ChainHead).where(ChainHead.chain_id == bindparam("c")).values(hash=bindparam("h"))


def _dbapi(session):
    return session.connection().connection.dbapi_connection


def _audited(lane: DatabaseLane, vault, tag: str):
    """A unit that appends one audit event tagged `tag` and commits it (releases its savepoint)."""
    def work() -> str:
        with lane.session() as session:
            append_tagged_event(session, vault, tag)
            session.commit()
        return tag
    return work


def _tags(vault, prefix: str) -> set[str]:
    with vault.session() as session:
        return set(session.scalars(select(AuditEvent.request_id).where(AuditEvent.request_id.like(f"{prefix}%"))))


class _Commits:
    """Counts the lane's COMMITs and when each one returned."""

    def __init__(self, engine, *, delay: float = 0.0, thread: str | None = "db-lane") -> None:
        self.times: list[float] = []
        self.delay = delay
        self.engine = engine
        self.thread = thread  # only the COMMITs on this thread (None: on any)
        event.listen(engine, "commit", self._on_commit)

    def _on_commit(self, _connection) -> None:
        if self.thread is None or threading.current_thread().name == self.thread:
            time.sleep(self.delay)  # an answer released before the COMMIT would show up during this pause
            self.times.append(time.monotonic())

    def remove(self) -> None:
        event.remove(self.engine, "commit", self._on_commit)


async def _one_batch(lane: DatabaseLane, units) -> list:
    """Run `units` as one batch: a first unit holds the lane until all of them are queued behind it."""
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(10)

    holder = asyncio.ensure_future(lane.run(hold))
    while not started.is_set():
        if holder.done():  # the holder's batch failed before it ran: show why
            await holder
            raise AssertionError("the holding unit never ran")
        await asyncio.sleep(0.001)
    tasks = [asyncio.ensure_future(_settled(lane, unit)) for unit in units]
    while len(lane._queue) < len(units):
        await asyncio.sleep(0.001)
    release.set()
    # a request the lane never answers fails the test here instead of hanging it
    await asyncio.wait_for(holder, 20)
    return await asyncio.wait_for(asyncio.gather(*tasks), 20)


async def _settled(lane: DatabaseLane, unit):
    """(result, exception, when answered)."""
    try:
        result, error = await lane.run(unit), None
    except Exception as exc:
        result, error = None, exc
    return result, error, time.monotonic()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_queued_reads_share_one_commit_on_one_thread_and_are_answered_after_it(vault):
    lane = DatabaseLane(vault, single_thread=True)
    commits = _Commits(vault.engine, delay=0.05)

    def unit(i: int):
        def work() -> tuple[int, object, str | None]:
            with lane.session() as session:
                append_tagged_event(session, vault, f"shared-{i}")
                session.commit()
                return threading.get_ident(), _dbapi(session), _seen.get(None)
        return work

    async def main():
        _seen.set("from the request")
        return await _one_batch(lane, [unit(i) for i in range(20)])

    try:
        answers = asyncio.run(main())
    finally:
        lane.close()
        commits.remove()
    assert all(error is None for _, error, _ in answers)
    results = [result for result, _, _ in answers]
    assert len({ident for ident, _, _ in results}) == 1 and results[0][0] != threading.get_ident()
    assert len({id(conn) for _, conn, _ in results}) == 1
    assert {seen for _, _, seen in results} == {"from the request"}
    # the holder's batch and the 20 queued reads' batch: two COMMITs, and every answer came after the second
    assert len(commits.times) == 2
    assert min(when for _, _, when in answers) > commits.times[1]
    assert _tags(vault, "shared-") == {f"shared-{i}" for i in range(20)}
    with vault.session() as session:
        check_chains(session)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_failing_unit_and_a_unit_that_leaves_its_session_open_take_nothing_else_with_them(vault):
    lane = DatabaseLane(vault, single_thread=True)
    with vault.session() as session:
        head_before = session.get(ChainHead, 0).hash

    def committed() -> str:
        with lane.session() as session:
            append_tagged_event(session, vault, "unit-a")
            session.commit()
        return "a"

    def fails_after_writing() -> None:
        with lane.session() as session:
            append_tagged_event(session, vault, "unit-b")
            raise ValueError("the unit's own failure")

    def leaves_open() -> str:
        session = lane.session()  # never closed: as if the request died between statements
        append_tagged_event(session, vault, "unit-c")
        session.execute(_MOVE, {"c": 0, "h": "a" * 64})
        return "c"

    def denial_then_raise() -> None:
        with lane.session() as session:
            append_tagged_event(session, vault, "unit-d")
            session.commit()  # the gate commits a denial, then raises
            raise NotFound()

    def reads_head() -> str:
        with lane.session() as session:
            return session.scalar(select(ChainHead.hash).where(ChainHead.chain_id == 0))

    try:
        answers = asyncio.run(_one_batch(lane, [committed, fails_after_writing, leaves_open, denial_then_raise,
                                                reads_head]))
    finally:
        lane.close()
    (a, a_error, _), (_, b_error, _), (c, c_error, _), (_, d_error, _), (head, head_error, _) = answers
    assert (a, a_error, c, c_error, head_error) == ("a", None, "c", None, None)
    assert isinstance(b_error, ValueError) and isinstance(d_error, NotFound)
    assert _tags(vault, "unit-") == {"unit-a", "unit-d"}
    with vault.session() as session:
        check_chains(session)  # the rolled-back appends left no gap and no moved head behind
        if head_before != "a" * 64:
            assert session.get(ChainHead, 0).hash != "a" * 64
    assert head != "a" * 64


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_refused_commit_answers_every_unit_of_the_batch_with_audit_unavailable(vault, monkeypatch):
    """A COMMIT that SQLite refuses (here: a deferred foreign key) keeps nothing of the batch, forwards none of its
    events to the sink, and leaves neither the driver in a transaction nor the write lock taken."""
    listener = SinkListener("tcp")
    from audit.sink import Sink

    monkeypatch.setattr(vault, "audit_sink", Sink(f"tcp://127.0.0.1:{listener.port}"))
    lane = DatabaseLane(vault, single_thread=True)

    def poisons_the_commit() -> str:
        with lane.session() as session:
            session.execute(text("CREATE TEMP TABLE IF NOT EXISTS lane_parent (id INTEGER PRIMARY KEY)"))
            session.execute(text("CREATE TEMP TABLE IF NOT EXISTS lane_child (parent INTEGER REFERENCES "
                                 "lane_parent (id) DEFERRABLE INITIALLY DEFERRED)"))
            session.execute(text("INSERT INTO lane_child VALUES (42)"))
            session.commit()  # only a savepoint release: the deferred check runs at the shared COMMIT
        return "poison"

    def driver_idle() -> bool:
        with lane.session() as session:
            session.connection()
        return True

    try:
        failed = asyncio.run(_one_batch(lane, [_audited(lane, vault, "refused-1"), poisons_the_commit,
                                               _audited(lane, vault, "refused-2")]))
        later = asyncio.run(_one_batch(lane, [_audited(lane, vault, "after-1"), driver_idle]))
    finally:
        lane.close()
    assert [type(error) for _, error, _ in failed] == [AuditUnavailable] * 3
    assert [(result, error) for result, error, _ in later] == [("after-1", None), (True, None)]
    assert _tags(vault, "refused-") == set() and _tags(vault, "after-") == {"after-1"}
    with vault.session() as session:
        check_chains(session)
        session.execute(_MOVE, {"c": -1, "h": "0" * 64})  # another connection can write: no lock left behind
        session.commit()
    time.sleep(0.3)
    assert [e["request_id"] for e in listener.events()] == ["after-1"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_transaction_sqlite_ended_mid_batch_fails_what_it_held_and_reruns_the_rest(vault):
    """SQLite rolls a transaction back by itself on some errors (a full disk, an I/O error); the units that wrote
    into it must not be answered as if their events were kept, and the units after it run again in a new batch."""
    lane = DatabaseLane(vault, single_thread=True)

    def transaction_lost() -> str:
        with lane.session() as session:
            _dbapi(session).rollback()  # stands in for SQLite's own rollback
        return "lost"

    try:
        answers = asyncio.run(_one_batch(lane, [_audited(lane, vault, "lost-1"), transaction_lost,
                                                _audited(lane, vault, "rerun-1")]))
    finally:
        lane.close()
    assert [type(error) for _, error, _ in answers[:2]] == [AuditUnavailable, AuditUnavailable]
    assert answers[2][:2] == ("rerun-1", None)
    assert _tags(vault, "lost-") == set() and _tags(vault, "rerun-") == {"rerun-1"}
    with vault.session() as session:
        check_chains(session)


def _lock_is_free(vault) -> bool:
    """Another connection can take SQLite's write lock at once."""
    other = sqlite3.connect(vault.settings.database_url.split("///", 1)[1], timeout=0.2)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.rollback()
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


def _lane_connection():
    return threading.current_thread().executor.connection.connection.dbapi_connection


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("after_loss", ["raises", "returns", "commits", "driver-only"])
def test_a_transaction_silently_replaced_after_a_loss_is_never_committed(vault, after_loss):
    """After SQLite's own rollback, pysqlite begins a new transaction at the next write without a word. Whatever the
    unit does next, the batch must not commit that new transaction as if it were the shared one."""
    lane = DatabaseLane(vault, single_thread=True)

    def loses_then_writes() -> str:
        if after_loss == "driver-only":  # no savepoint statement of the unit fails: the marker savepoint is gone
            _lane_connection().rollback()
            _lane_connection().execute("UPDATE audit_chain_heads SET hash = ? WHERE chain_id = 0", ("e" * 64,))
            return "unnoticed"
        with lane.session() as session:
            append_tagged_event(session, vault, "replaced-unit")
            _dbapi(session).rollback()  # stands in for SQLite's own rollback
            session.execute(_MOVE, {"c": 0, "h": "e" * 64})  # a new transaction begins here, silently
            if after_loss == "raises":
                raise ValueError("after the loss")
            if after_loss == "commits":
                session.commit()
        return "unnoticed"

    try:
        answers = asyncio.run(_one_batch(lane, [_audited(lane, vault, "replaced-1"), loses_then_writes,
                                                _audited(lane, vault, "replaced-2")]))
        later = asyncio.run(_one_batch(lane, [_audited(lane, vault, "replaced-after")]))
    finally:
        lane.close()
    assert AuditUnavailable in {type(error) for _, error, _ in answers}
    assert all(result != "unnoticed" for result, _, _ in answers)
    assert _tags(vault, "replaced-1") == set() and _tags(vault, "replaced-unit") == set()
    assert [(result, error) for result, error, _ in later] == [("replaced-after", None)]
    with vault.session() as session:
        assert session.get(ChainHead, 0).hash != "e" * 64
        check_chains(session)
    assert _lock_is_free(vault)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_savepoint_release_sqlite_refuses_fails_the_batch(vault):
    """SQLite refuses to release a savepoint while a write statement is still being read (RETURNING, half
    fetched). SQLAlchemy then believes the savepoint gone and never rolls it back: the unit's writes must not be
    committed behind its error, nor the batch answered as if its stack were sound."""
    lane = DatabaseLane(vault, single_thread=True)

    def half_read_returning() -> str:
        with lane.session() as session:
            append_tagged_event(session, vault, "half-read")
            session.execute(text("CREATE TEMP TABLE IF NOT EXISTS lane_rows (n INTEGER)"))
            session.execute(text("INSERT INTO lane_rows VALUES (1), (2), (3)"))
            pending = _dbapi(session).cursor()  # SQLAlchemy buffers RETURNING rows; a driver cursor need not
            pending.execute("UPDATE lane_rows SET n = n + 1 RETURNING n")
            pending.fetchone()
            try:
                session.commit()
            finally:
                pending.close()  # the stack is sound again for SQLite, not for SQLAlchemy's idea of it
        return "released"

    try:
        answers = asyncio.run(_one_batch(lane, [_audited(lane, vault, "half-1"), half_read_returning]))
        later = asyncio.run(_one_batch(lane, [_audited(lane, vault, "half-after")]))
    finally:
        lane.close()
    assert [type(error) for _, error, _ in answers] == [AuditUnavailable, AuditUnavailable]
    assert _tags(vault, "half-") == {"half-after"} and _tags(vault, "half-read") == set()
    assert [(result, error) for result, error, _ in later] == [("half-after", None)]
    with vault.session() as session:
        check_chains(session)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_unit_gets_one_session_and_a_bad_answer_does_not_strand_the_others(vault):
    lane = DatabaseLane(vault, single_thread=True)

    def two_sessions() -> str:
        with lane.session():
            lane.session()  # SQLite nests savepoints: a second session would share the first one's fate
        return "two"

    def stops() -> None:
        raise StopIteration  # an exception a future cannot carry

    def fine() -> str:
        return "fine"

    try:
        answers = asyncio.run(_one_batch(lane, [two_sessions, stops, fine]))
    finally:
        lane.close()
    (_, two_error, _), (_, stop_error, _), (result, error, _) = answers
    assert isinstance(two_error, RuntimeError) and isinstance(stop_error, RuntimeError)
    assert (result, error) == ("fine", None)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_unexpected_error_in_the_commit_answers_the_batch_and_the_lane_goes_on(vault, monkeypatch):
    from vault.db.fastpath.group_commit import GroupTransaction

    lane = DatabaseLane(vault, single_thread=True)
    real_commit = GroupTransaction.commit

    def interrupted_once(self) -> None:
        if any(e["request_id"] == "interrupted" for e in self._held):
            raise KeyboardInterrupt  # not an Exception: it escapes the batch's own error handling
        real_commit(self)

    monkeypatch.setattr(GroupTransaction, "commit", interrupted_once)
    try:
        failed = asyncio.run(_one_batch(lane, [_audited(lane, vault, "interrupted")]))
        assert _lock_is_free(vault)  # the interrupted batch let go of the write lock before the next one came
        worker = lane._worker
        later = asyncio.run(_one_batch(lane, [_audited(lane, vault, "after-interrupt")]))
        assert lane._worker is worker and worker.is_alive()
    finally:
        lane.close()
    assert [type(error) for _, error, _ in failed] == [AuditUnavailable]
    assert [(result, error) for result, error, _ in later] == [("after-interrupt", None)]
    assert _tags(vault, "interrupted") == set() and _tags(vault, "after-interrupt") == {"after-interrupt"}
    with vault.session() as session:
        check_chains(session)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_lane_stops_with_its_connection_and_starts_again(vault):
    lane = DatabaseLane(vault, single_thread=True)

    def where() -> tuple[threading.Thread, str | None]:
        with lane.session() as session:
            session.connection()
            return threading.current_thread(), _seen.get(None)

    first = asyncio.run(lane.run(where))
    worker = lane._worker
    connection = worker.executor.connection
    lane.close()
    assert not worker.is_alive() and connection.closed and worker.executor.connection is None
    assert lane._worker is None
    with pytest.raises(RuntimeError):
        lane.session()  # only work running on the lane gets a lane session
    again = asyncio.run(lane.run(where))  # an app started again (a second lifespan) gets a fresh thread
    lane.close()
    assert again[0] is not first[0] and again[0] is not threading.current_thread() and again[1] is None

    async def failing():
        return await lane.run(lambda: 1 / 0)

    with pytest.raises(ZeroDivisionError):
        asyncio.run(failing())
    lane.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_driver_savepoints_roll_back_and_raise_sqlalchemy_errors(vault):
    """SAVEPOINT, RELEASE and ROLLBACK TO go straight to the driver on SQLite (vault/db.py)."""
    from sqlalchemy.exc import OperationalError

    with vault.engine.connect() as connection:
        connection.begin()
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        nested = connection.begin_nested()
        connection.execute(_MOVE, {"c": 0, "h": "c" * 64})
        nested.rollback()
        assert connection.scalar(select(ChainHead.hash).where(ChainHead.chain_id == 0)) != "c" * 64
        nested = connection.begin_nested()
        connection.execute(_MOVE, {"c": 0, "h": "d" * 64})
        nested.commit()
        assert connection.scalar(select(ChainHead.hash).where(ChainHead.chain_id == 0)) == "d" * 64
        with pytest.raises(OperationalError) as caught:
            vault.engine.dialect.do_release_savepoint(connection, "no_such_savepoint")
        assert "no such savepoint" in str(caught.value)
        connection.rollback()
    with vault.session() as session:
        assert session.scalar(select(func.count()).select_from(ChainHead).where(ChainHead.hash == "d" * 64)) == 0


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
def test_postgres_reads_use_the_pool(backend, request):
    require_pg()
    vault = request.getfixturevalue("vault")
    lane = DatabaseLane(vault, single_thread=False)

    def bound() -> object:
        with lane.session() as session:
            return session.get_bind()

    assert asyncio.run(lane.run(bound)) is vault.engine
    lane.close()


def test_reads_through_the_app_use_the_lane_and_stay_audited(client, vault, app):
    person = register(client, username="lane.user")
    headers = login(client, "lane.user")
    record_id = upload(client, headers, png_bytes(b"lane"), title="lane").json()["record_id"]
    for _ in range(3):
        assert client.get(f"/v1/records/{record_id}", headers=headers).status_code == 200
    assert client.get("/v1/records", headers=headers).status_code == 200
    assert client.get(f"/v1/records/{record_id}/content", headers=headers).content == png_bytes(b"lane")
    lane = app.state.db_lane
    runners = list(lane._runners.values())  # on SQLite the reads ran on the event loop, the write lock being free
    assert (len(runners) == 1 and runners[0].executor.connection is not None) == vault.settings.is_sqlite
    log = client.get("/v1/patients/me/access-log", headers=headers).json()["items"]
    assert sum(e["action"] == "record.read" for e in log) == 3
    assert person["patient_id"]


# ------------------------------------------------------------------------------------------ on the event loop
async def _gathered(lane: DatabaseLane, units) -> list:
    """Run `units` as requests arriving together: queued in one loop iteration, so one batch on the loop."""
    return await asyncio.wait_for(asyncio.gather(*(_settled(lane, unit) for unit in units)), 20)


def _hold_write_lock(vault):
    """Another connection that holds SQLite's write lock until closed."""
    other = sqlite3.connect(vault.settings.database_url.split("///", 1)[1], timeout=1, check_same_thread=False,
                            isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


@pytest.mark.parametrize("backend", ["sqlite"])
def test_on_the_loop_reads_arriving_together_share_one_commit_and_are_answered_after_it(vault):
    lane = DatabaseLane(vault, single_thread=True, on_loop=True)
    commits = _Commits(vault.engine, delay=0.05, thread=None)

    def unit(i: int):
        def work() -> tuple[int, str | None]:
            with lane.session() as session:
                append_tagged_event(session, vault, f"loop-{i}")
                session.commit()
                return threading.get_ident(), _seen.get(None)
        return work

    async def main():
        _seen.set("from the request")
        return threading.get_ident(), await _gathered(lane, [unit(i) for i in range(20)])

    try:
        loop_thread, answers = asyncio.run(main())
    finally:
        lane.close()
        commits.remove()
    assert all(error is None for _, error, _ in answers)
    assert {result for result, _, _ in answers} == {(loop_thread, "from the request")}
    assert lane._worker is None  # the lock was free: nothing went to the lane thread
    assert len(commits.times) == 1 and min(when for _, _, when in answers) > commits.times[0]
    assert _tags(vault, "loop-") == {f"loop-{i}" for i in range(20)}
    with vault.session() as session:
        check_chains(session)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_on_the_loop_a_taken_write_lock_is_waited_for_without_blocking_the_loop(vault):
    """While another writer holds the lock, the reads wait and the loop goes on serving; once it is released, they
    run and are answered."""
    lane = DatabaseLane(vault, single_thread=True, on_loop=True)
    other = _hold_write_lock(vault)

    async def main():
        reads = asyncio.ensure_future(_gathered(lane, [_audited(lane, vault, f"waited-{i}") for i in range(3)]))
        started = time.monotonic()
        for _ in range(30):  # ~0.3 s in which the loop must keep turning
            await asyncio.sleep(0.01)
        turning = time.monotonic() - started
        assert not reads.done()
        other.rollback()  # the other writer finishes
        return turning, await reads

    try:
        turning, answers = asyncio.run(main())
    finally:
        other.close()
        lane.close()
    assert turning < 2  # a loop that waited in SQLite's busy handler would have stood still for its 10 s
    assert [(result, error) for result, error, _ in answers] == [(f"waited-{i}", None) for i in range(3)]
    assert _tags(vault, "waited-") == {f"waited-{i}" for i in range(3)}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_on_the_loop_a_lock_that_stays_taken_answers_audit_unavailable(vault, monkeypatch):
    from vault.db.fastpath import lane as lanes

    monkeypatch.setattr(lanes, "LOCK_WAIT_SECONDS", 0.2)
    lane = DatabaseLane(vault, single_thread=True, on_loop=True)
    other = _hold_write_lock(vault)
    try:
        started = time.monotonic()
        answers = asyncio.run(_gathered(lane, [_audited(lane, vault, "starved-1"), _audited(lane, vault, "starved-2")]))
        waited = time.monotonic() - started
        other.rollback()
        later = asyncio.run(_gathered(lane, [_audited(lane, vault, "after-starved")]))
    finally:
        other.close()
        lane.close()
    assert [type(error) for _, error, _ in answers] == [AuditUnavailable] * 2 and 0.2 <= waited < 5
    assert [(result, error) for result, error, _ in later] == [("after-starved", None)]
    assert _tags(vault, "starved-") == set()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_on_the_loop_failures_stay_their_own_and_a_lost_transaction_fails_what_it_held(vault):
    lane = DatabaseLane(vault, single_thread=True, on_loop=True)

    def fails_after_writing() -> None:
        with lane.session() as session:
            append_tagged_event(session, vault, "loop-failed")
            raise ValueError("the unit's own failure")

    def transaction_lost() -> str:
        with lane.session() as session:
            _dbapi(session).rollback()  # stands in for SQLite's own rollback
        return "lost"

    try:
        first = asyncio.run(_gathered(lane, [_audited(lane, vault, "loop-kept"), fails_after_writing]))
        second = asyncio.run(_gathered(lane, [_audited(lane, vault, "loop-lost"), transaction_lost,
                                              _audited(lane, vault, "loop-rerun")]))
    finally:
        lane.close()
    assert first[0][:2] == ("loop-kept", None) and isinstance(first[1][1], ValueError)
    assert [type(error) for _, error, _ in second[:2]] == [AuditUnavailable, AuditUnavailable]
    assert second[2][:2] == ("loop-rerun", None)
    assert _tags(vault, "loop-") == {"loop-kept", "loop-rerun"}
    with vault.session() as session:
        check_chains(session)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_on_the_loop_the_wal_is_checkpointed_on_a_thread_never_inside_a_loop_commit(vault, monkeypatch):
    from vault.db.fastpath import lane as lanes

    checkpoints: list[int] = []
    checkpoint = lanes._checkpoint_wal

    def recorded(engine) -> None:
        checkpoint(engine)
        checkpoints.append(threading.get_ident())

    monkeypatch.setattr(lanes, "CHECKPOINT_EVERY", 2)
    monkeypatch.setattr(lanes, "_checkpoint_wal", recorded)
    lane = DatabaseLane(vault, single_thread=True, on_loop=True)

    def loop_connection_pragma() -> int:
        with lane.session() as session:
            return _dbapi(session).execute("PRAGMA wal_autocheckpoint").fetchone()[0]

    async def main():
        answers = []
        for i in range(4):
            answers.append(await _gathered(lane, [_audited(lane, vault, f"wal-{i}")]))
            runner = lane._runners[asyncio.get_running_loop()]
            for _ in range(500):  # a checkpoint on its thread finishes while the loop turns
                if not runner.checkpointing:
                    break
                await asyncio.sleep(0.01)
        pragma = await _gathered(lane, [loop_connection_pragma])
        return threading.get_ident(), answers, pragma

    try:
        loop_thread, answers, pragma = asyncio.run(main())
    finally:
        lane.close()
    assert all(error is None for batch in answers for _, error, _ in batch)
    assert pragma[0][:2] == (0, None)  # the loop's own connection never checkpoints inside a COMMIT
    assert len(checkpoints) == 2 and loop_thread not in checkpoints  # after batches 2 and 4, on a thread
    with vault.engine.connect() as connection:  # and the checkpoint copied the WAL back
        busy, logged, copied = connection.connection.dbapi_connection.execute(
            "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and logged == copied


@pytest.mark.parametrize("backend", ["sqlite"])
def test_on_the_loop_a_stalled_audit_sink_never_stalls_the_loop(vault, monkeypatch):
    """The sink's socket I/O (a TCP connect that hangs until its 2 s timeout) runs on a thread of its own."""
    import socket

    from audit.sink import Sink

    collector = socket.socket()
    collector.bind(("127.0.0.1", 0))
    collector.listen(0)
    fillers = []  # a full accept queue: further connection attempts hang
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(collector.getsockname())
        except BlockingIOError:
            pass
        fillers.append(filler)
    monkeypatch.setattr(vault, "audit_sink", Sink(f"tcp://127.0.0.1:{collector.getsockname()[1]}"))
    lane = DatabaseLane(vault, single_thread=True, on_loop=True)

    async def main():
        gaps, last = [], time.monotonic()

        async def ticker():
            nonlocal last
            while True:
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticking = asyncio.ensure_future(ticker())
        answers = [await _gathered(lane, [_audited(lane, vault, f"sunk-{i}")]) for i in range(2)]
        await asyncio.sleep(0.05)
        ticking.cancel()
        return answers, max(gaps)

    try:
        answers, longest_stall = asyncio.run(main())
    finally:
        lane.close()
        for sock in (collector, *fillers):
            sock.close()
    assert [batch[0][:2] for batch in answers] == [("sunk-0", None), ("sunk-1", None)]
    assert longest_stall < 0.5


@pytest.mark.parametrize("backend", ["sqlite"])
def test_on_the_loop_connections_go_back_closed_when_the_lane_or_a_loop_ends(vault):
    """A loop's kept connection has no busy timeout: it never returns to the pool. A closed lane's retry timer runs
    nothing, and the runners of loops that have ended give their connections back."""
    import gc

    lane = DatabaseLane(vault, single_thread=True, on_loop=True)
    for i in range(20):  # more loops than the pool has connections (8 + 8 overflow)
        assert asyncio.run(_gathered(lane, [_audited(lane, vault, f"loops-{i}")]))[0][:2] == (f"loops-{i}", None)
    assert len(lane._runners) == 1 and vault.engine.pool.checkedout() == 1
    other = _hold_write_lock(vault)

    async def close_while_retrying():
        waiting = asyncio.ensure_future(lane.run(_audited(lane, vault, "closed-while-waiting")))
        await asyncio.sleep(0.05)
        runner = next(iter(lane._runners.values()))
        assert runner.pending is not None and len(runner.queue) == 1  # its retry timer is set
        threading.Timer(0.2, other.rollback).start()
        lane.close()  # as at the lifespan's end: the queued read goes to the lane thread, which waits for the lock
        answer = await waiting
        await asyncio.sleep(0.1)  # the cancelled timer would have fired by now
        return runner, answer

    try:
        runner, answer = asyncio.run(close_while_retrying())
    finally:
        other.close()
    assert answer == "closed-while-waiting" and runner.executor.connection is None
    del runner
    gc.collect()
    pooled = [vault.engine.connect() for _ in range(vault.engine.pool.checkedin())]
    try:
        assert pooled and {c.exec_driver_sql("PRAGMA busy_timeout").scalar() for c in pooled} == {10000}
    finally:
        for connection in pooled:
            connection.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_on_the_loop_each_read_waits_its_own_time_for_the_lock(vault, monkeypatch):
    from vault.db.fastpath import lane as lanes

    monkeypatch.setattr(lanes, "LOCK_WAIT_SECONDS", 0.3)
    lane = DatabaseLane(vault, single_thread=True, on_loop=True)
    other = _hold_write_lock(vault)

    async def timed(tag: str, delay: float):
        await asyncio.sleep(delay)
        started = time.monotonic()
        result, error, _ = await _settled(lane, _audited(lane, vault, tag))
        return type(error), time.monotonic() - started

    async def main():
        return await asyncio.gather(timed("own-a", 0), timed("own-b", 0.25))

    try:
        (a_error, a_waited), (b_error, b_waited) = asyncio.run(main())
    finally:
        other.close()
        lane.close()
    assert a_error is b_error is AuditUnavailable
    assert 0.3 <= a_waited < 1 and 0.3 <= b_waited < 1  # b's wait counts from when b was queued


@pytest.mark.parametrize("backend", ["sqlite"])
def test_on_the_loop_a_begin_that_fails_for_another_reason_answers_at_once(vault):
    """Only a taken lock is waited for: any other failure to begin answers 503 at once, and the next batch gets a
    fresh connection."""
    lane = DatabaseLane(vault, single_thread=True, on_loop=True)

    async def main():
        first = await _gathered(lane, [_audited(lane, vault, "begin-1")])
        runner = lane._runners[asyncio.get_running_loop()]
        runner.executor.connection.connection.dbapi_connection.close()  # the driver connection is gone
        started = time.monotonic()
        broken = await _gathered(lane, [_audited(lane, vault, "begin-2")])
        took = time.monotonic() - started
        again = await _gathered(lane, [_audited(lane, vault, "begin-3")])
        return first, broken, took, again

    try:
        first, broken, took, again = asyncio.run(main())
    finally:
        lane.close()
    assert first[0][:2] == ("begin-1", None) and again[0][:2] == ("begin-3", None)
    assert isinstance(broken[0][1], AuditUnavailable) and took < 0.5
    assert _tags(vault, "begin-") == {"begin-1", "begin-3"}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_unit_session_commits_and_undoes_its_whole_unit_with_or_without_an_orm_transaction(vault):
    """A unit's session opens the unit's savepoint at the driver while the ORM holds no transaction; once the ORM
    begins one, it nests inside. Either way a commit keeps what the unit did since its last commit, and a rollback,
    a close or a failure undoes it, and no savepoint of the unit outlives it."""
    from vault.db.fastpath.group_commit import GroupTransaction, UnitSession

    def insert(tag: str):
        return text("INSERT INTO unit_marks VALUES (:tag)").bindparams(tag=tag)

    def setup(session):
        session.connection().execute(text("CREATE TEMP TABLE unit_marks (tag TEXT)"))
        session.commit()

    def driver_only(session):  # the ORM never begins a transaction
        session.connection().execute(insert("a1"))
        session.commit()
        session.connection().execute(insert("a2"))
        session.rollback()
        session.connection().execute(insert("a3"))
        session.commit()

    def orm_then_driver(session):
        session.execute(insert("b1"))  # the ORM's transaction
        session.connection().execute(insert("b2"))  # inside it
        session.rollback()
        session.connection().execute(insert("b3"))  # the unit's own savepoint
        session.execute(insert("b4"))  # the ORM's, nested inside
        session.commit()

    def closed_uncommitted(session):
        session.connection().execute(insert("c1"))
        session.execute(insert("c2"))

    def fails_after_commit(session):
        session.connection().execute(insert("d1"))
        session.commit()
        session.execute(insert("d2"))
        raise ValueError("after its commit")

    with vault.engine.connect() as connection:
        group = GroupTransaction(vault, connection)
        driver = connection.connection.dbapi_connection
        for work in (setup, driver_only, orm_then_driver, closed_uncommitted, fails_after_commit):
            session = group.session()
            assert isinstance(session, UnitSession)
            try:
                with session:
                    work(session)
            except ValueError:
                pass
            group.end_unit()
            with pytest.raises(sqlite3.OperationalError, match="no such savepoint"):
                driver.execute("RELEASE SAVEPOINT hv_unit")
        kept = sorted(tag for (tag,) in driver.execute("SELECT tag FROM unit_marks"))
        group.commit()
    assert kept == ["a1", "a3", "b3", "b4", "d1"]


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("end", ["close", "reset"])
def test_a_unit_session_closed_or_reset_and_used_again_keeps_nothing_from_before(vault, end):
    """The session may be used again after close() or reset() (no rollback event fires): what it wrote and appended
    before must be gone, in the database and in the batch's events."""
    from vault.db.fastpath.group_commit import GroupTransaction

    forwarded: list[dict] = []
    with vault.engine.connect() as connection:
        group = GroupTransaction(vault, connection, forward=forwarded.extend)
        with group.session() as session:
            session.connection().execute(text("CREATE TEMP TABLE reuse_marks (tag TEXT)"))
            session.commit()
        group.end_unit()
        session = group.session()
        session.connection().execute(text("INSERT INTO reuse_marks VALUES ('undone')"))
        append_tagged_event(session, vault, f"reuse-{end}-undone")
        getattr(session, end)()
        session.connection().execute(text("INSERT INTO reuse_marks VALUES ('kept')"))
        append_tagged_event(session, vault, f"reuse-{end}-kept")
        session.commit()
        group.end_unit()
        kept = [tag for (tag,) in connection.connection.dbapi_connection.execute("SELECT tag FROM reuse_marks")]
        group.commit()
    assert kept == ["kept"]
    assert [e["request_id"] for e in forwarded] == [f"reuse-{end}-kept"] and _tags(vault, "reuse-") == {
        f"reuse-{end}-kept"}
    with vault.session() as session:
        check_chains(session)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_unit_session_refuses_a_transaction_of_its_own_and_a_savepoint_outside_the_shared_one(vault):
    from sqlalchemy.exc import InvalidRequestError, OperationalError

    from vault.db.fastpath.group_commit import GroupTransaction, TransactionLost

    with vault.engine.connect() as connection:
        group = GroupTransaction(vault, connection)
        session = group.session()
        session.connection()
        with pytest.raises(InvalidRequestError):  # its end would not be the unit's
            session.begin()
        session.close()
        group.end_unit()
        session = group.session()
        append_tagged_event(session, vault, "outside-before")
        connection.connection.dbapi_connection.rollback()  # stands in for SQLite's own rollback
        with pytest.raises(OperationalError):
            session.rollback()
        with pytest.raises(OperationalError, match="no transaction to hold the savepoint"):
            session.connection()  # would begin a transaction whose RELEASE commits on its own
        session.close()
        with pytest.raises(TransactionLost):
            group.end_unit()
        group.rollback()
    assert _tags(vault, "outside-") == set()
    assert _lock_is_free(vault)
