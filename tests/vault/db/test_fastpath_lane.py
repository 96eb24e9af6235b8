"""The SQLite read fast path (vault/db/fastpath/lane.py): hot reads in batches on the event loop, their audit events
kept as values and written together before the batch's one COMMIT.

What must hold, each shown here through `DatabaseLane.run` and what the database and the sink hold afterwards: no
read is answered before the COMMIT that holds its audit events; a failed COMMIT, a failed audit write or a lost
transaction answers every read of the batch 503 (`AuditUnavailable`) and keeps none of its events; a read's own
failure stays its own (its committed events are kept, its uncommitted ones dropped); the chains never fork; the loop
never waits for SQLite's write lock; the loop's connection never goes back to the pool. On PostgreSQL: the shared
pool, one transaction per read."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import gc
import socket
import sqlite3
import threading
import time

import pytest
from sqlalchemy import event, select, text

from audit import trail
from audit.models import AuditEvent, ChainHead
from audit.sink import Sink
from tests.conftest import require_pg
from tests.helpers import SinkListener, login, png_bytes, register, upload
from tests.helpers.chains import check_chains
from tests.helpers.events import append_tagged_event
from vault.db.fastpath import DatabaseLane
from vault.db.fastpath import lane as lanes
from vault.errors import AuditUnavailable

_seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen")


def _dbapi(session):
    return session.connection().connection.dbapi_connection


def _audited(lane: DatabaseLane, vault, tag: str, patient_id: str | None = None):
    """A read that appends one audit event tagged `tag` and commits it."""
    def work() -> str:
        with lane.session() as session:
            append_tagged_event(session, vault, tag, patient_id)
            session.commit()
        return tag
    return work


def _tags(vault, prefix: str) -> set[str]:
    with vault.session() as session:
        return set(session.scalars(select(AuditEvent.request_id).where(AuditEvent.request_id.like(f"{prefix}%"))))


class _Commits:
    """Counts the COMMITs on the engine and when each one returned."""

    def __init__(self, engine, *, delay: float = 0.0) -> None:
        self.times: list[float] = []
        self.delay = delay
        self.engine = engine
        event.listen(engine, "commit", self._on_commit)

    def _on_commit(self, _connection) -> None:
        time.sleep(self.delay)  # an answer released before the COMMIT would show up during this pause
        self.times.append(time.monotonic())

    def remove(self) -> None:
        event.remove(self.engine, "commit", self._on_commit)


async def _settled(lane: DatabaseLane, unit):
    """(result, exception, when answered)."""
    try:
        result, error = await lane.run(unit), None
    except Exception as exc:
        result, error = None, exc
    return result, error, time.monotonic()


async def _gathered(lane: DatabaseLane, units) -> list:
    """Run `units` as requests arriving together: queued in one loop iteration, so one batch."""
    return await asyncio.wait_for(asyncio.gather(*(_settled(lane, unit) for unit in units)), 20)


def _batch(lane: DatabaseLane, units) -> list:
    return asyncio.run(_gathered(lane, units))


def _hold_write_lock(vault):
    """Another connection that holds SQLite's write lock until closed."""
    other = sqlite3.connect(vault.settings.database_url.split("///", 1)[1], timeout=1, check_same_thread=False,
                            isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def _no_lock_left(vault) -> None:
    with vault.session() as session:  # another connection can write: the batch left no lock behind
        session.execute(text("UPDATE audit_chain_heads SET hash = hash WHERE chain_id = -1"))
        session.commit()


sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])


@sqlite_only
def test_reads_arriving_together_share_one_commit_on_the_loop_and_are_answered_after_it(vault):
    lane = DatabaseLane(vault, single_thread=True)
    commits = _Commits(vault.engine, delay=0.05)

    def unit(i: int):
        def work() -> tuple[int, str | None]:
            with lane.session() as session:
                append_tagged_event(session, vault, f"shared-{i}")
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
    assert len(commits.times) == 1 and min(when for _, _, when in answers) > commits.times[0]
    assert _tags(vault, "shared-") == {f"shared-{i}" for i in range(20)}
    with vault.session() as session:
        check_chains(session)


@sqlite_only
def test_a_reads_failure_stays_its_own_committed_events_kept_uncommitted_dropped(vault):
    lane = DatabaseLane(vault, single_thread=True)

    def denied() -> None:  # as the gate does: a denial is committed, then the read fails
        with lane.session() as session:
            append_tagged_event(session, vault, "own-denied")
            session.commit()
            append_tagged_event(session, vault, "own-uncommitted")
            raise PermissionError("denied")

    def rolled_back() -> str:
        with lane.session() as session:
            append_tagged_event(session, vault, "own-rolled-back")
        return "closed without commit"

    try:
        answers = _batch(lane, [_audited(lane, vault, "own-1"), denied, rolled_back, _audited(lane, vault, "own-2")])
    finally:
        lane.close()
    assert answers[0][:2] == ("own-1", None) and isinstance(answers[1][1], PermissionError)
    assert answers[2][:2] == ("closed without commit", None) and answers[3][:2] == ("own-2", None)
    assert _tags(vault, "own-") == {"own-1", "own-denied", "own-2"}
    with vault.session() as session:
        check_chains(session)


@sqlite_only
def test_a_refused_commit_answers_every_read_503_keeps_nothing_and_forwards_nothing(vault, monkeypatch):
    """A COMMIT that SQLite refuses (here: a deferred foreign key) keeps nothing of the batch, forwards none of its
    events to the sink, and leaves no write lock taken; the next batch runs on a fresh connection."""
    listener = SinkListener("tcp")
    monkeypatch.setattr(vault, "audit_sink", Sink(f"tcp://127.0.0.1:{listener.port}"))
    lane = DatabaseLane(vault, single_thread=True)

    def poisons_the_commit() -> str:
        with lane.session() as session:
            session.execute(text("CREATE TEMP TABLE IF NOT EXISTS lane_parent (id INTEGER PRIMARY KEY)"))
            session.execute(text("CREATE TEMP TABLE IF NOT EXISTS lane_child (parent INTEGER REFERENCES "
                                 "lane_parent (id) DEFERRABLE INITIALLY DEFERRED)"))
            session.execute(text("INSERT INTO lane_child VALUES (42)"))
            session.commit()  # the deferred check runs at the batch's COMMIT
        return "poison"

    try:
        failed = _batch(lane, [_audited(lane, vault, "refused-1"), poisons_the_commit,
                               _audited(lane, vault, "refused-2")])
        later = _batch(lane, [_audited(lane, vault, "after-1")])
    finally:
        lane.close()
    assert [type(error) for _, error, _ in failed] == [AuditUnavailable] * 3
    assert [(result, error) for result, error, _ in later] == [("after-1", None)]
    assert _tags(vault, "refused-") == set() and _tags(vault, "after-") == {"after-1"}
    _no_lock_left(vault)
    with vault.session() as session:
        check_chains(session)
    time.sleep(0.3)
    assert [e["request_id"] for e in listener.events()] == ["after-1"]


@sqlite_only
def test_an_audit_write_that_fails_answers_every_read_503_and_keeps_nothing(vault):
    """The events are written just before the COMMIT; when that fails (here: a chain without its head row), no read
    of the batch gets its answer, whatever it returned, and none of its events is kept."""
    lane = DatabaseLane(vault, single_thread=True)

    def headless() -> str:
        with lane.session() as session:
            append_tagged_event(session, vault, "unwritable")
            pending = session.info[trail.PENDING_KEY]
            pending[-1] = dataclasses.replace(pending[-1], chain=99_999)  # a chain that has no head row
            session.commit()
        return "returned"

    try:
        answers = _batch(lane, [_audited(lane, vault, "unwritten-1"), headless, _audited(lane, vault, "unwritten-2")])
    finally:
        lane.close()
    assert [type(error) for _, error, _ in answers] == [AuditUnavailable] * 3
    assert _tags(vault, "unwritten-") == set()
    _no_lock_left(vault)


@sqlite_only
@pytest.mark.parametrize("how", ["sqlite", "session"])
def test_a_lost_transaction_is_never_committed(vault, how):
    """SQLite ended the batch's transaction by itself (a full disk, an I/O error), or a read's session rolled it back:
    the batch answers 503 and keeps nothing, and the next batch works."""
    lane = DatabaseLane(vault, single_thread=True)

    def loses_the_transaction() -> str:
        with lane.session() as session:
            if how == "sqlite":
                _dbapi(session).rollback()  # stands in for SQLite's own rollback
            else:
                session.connection()
                session.rollback()
        return "lost"

    try:
        lost = _batch(lane, [_audited(lane, vault, "lost-1"), loses_the_transaction, _audited(lane, vault, "lost-2")])
        later = _batch(lane, [_audited(lane, vault, "later-1")])
    finally:
        lane.close()
    assert [type(error) for _, error, _ in lost] == [AuditUnavailable] * 3
    assert [(result, error) for result, error, _ in later] == [("later-1", None)]
    assert _tags(vault, "lost-") == set() and _tags(vault, "later-") == {"later-1"}
    with vault.session() as session:
        check_chains(session)


@sqlite_only
def test_a_chain_never_forks_when_another_writer_moves_its_head_between_batches(vault):
    """Events are linked after the batch holds the write lock, onto the heads as they are then."""
    lane = DatabaseLane(vault, single_thread=True)
    patient = "3f0c0a4e-0000-4000-8000-000000000001"

    def other_writer(tag: str) -> None:
        with vault.session() as session:
            append_tagged_event(session, vault, tag, patient)
            session.commit()

    async def main():
        answers = []
        for i in range(3):
            await asyncio.to_thread(other_writer, f"fork-other-{i}")
            answers += await _gathered(lane, [_audited(lane, vault, f"fork-lane-{i}-{j}", patient) for j in range(3)])
        return answers

    try:
        answers = asyncio.run(main())
    finally:
        lane.close()
    assert all(error is None for _, error, _ in answers)
    with vault.session() as session:
        check_chains(session)
        chain = session.scalars(select(AuditEvent.chain_id).where(AuditEvent.request_id == "fork-other-0")).one()
        tags = session.scalars(select(AuditEvent.request_id).where(AuditEvent.chain_id == chain,
                                                                   AuditEvent.request_id.like("fork-%"))
                               .order_by(AuditEvent.seq)).all()
    assert len(tags) == 12


@sqlite_only
def test_a_taken_write_lock_is_waited_for_without_blocking_the_loop(vault):
    """While another writer holds the lock, the reads wait and the loop goes on serving; once it is released, they
    run and are answered."""
    lane = DatabaseLane(vault, single_thread=True)
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


@sqlite_only
def test_each_read_waits_its_own_time_for_a_lock_that_stays_taken_then_answers_503(vault, monkeypatch):
    monkeypatch.setattr(lanes, "LOCK_WAIT_SECONDS", 0.3)
    lane = DatabaseLane(vault, single_thread=True)
    other = _hold_write_lock(vault)

    async def timed(tag: str, delay: float):
        await asyncio.sleep(delay)
        started = time.monotonic()
        _result, error, _ = await _settled(lane, _audited(lane, vault, tag))
        return type(error), time.monotonic() - started

    async def main():
        return await asyncio.gather(timed("starved-a", 0), timed("starved-b", 0.25))

    try:
        (a_error, a_waited), (b_error, b_waited) = asyncio.run(main())
        other.rollback()
        later = _batch(lane, [_audited(lane, vault, "after-starved")])
    finally:
        other.close()
        lane.close()
    assert a_error is b_error is AuditUnavailable
    assert 0.3 <= a_waited < 1 and 0.3 <= b_waited < 1  # b's wait counts from when b was queued
    assert [(result, error) for result, error, _ in later] == [("after-starved", None)]
    assert _tags(vault, "starved-") == set()


@sqlite_only
def test_a_begin_that_fails_for_another_reason_answers_at_once_and_the_next_batch_reconnects(vault):
    lane = DatabaseLane(vault, single_thread=True)

    def breaks_the_connection() -> str:
        with lane.session() as session:
            _dbapi(session).close()  # the driver connection is gone: the COMMIT fails, then the next BEGIN would
        return "broken"

    async def main():
        broken = await _gathered(lane, [breaks_the_connection])
        started = time.monotonic()
        again = await _gathered(lane, [_audited(lane, vault, "begin-again")])
        return broken, time.monotonic() - started, again

    try:
        broken, took, again = asyncio.run(main())
    finally:
        lane.close()
    assert isinstance(broken[0][1], AuditUnavailable) and took < 0.5
    assert again[0][:2] == ("begin-again", None)


@sqlite_only
def test_the_wal_is_checkpointed_on_a_thread_never_inside_a_loop_commit(vault, monkeypatch):
    checkpoints: list[int] = []
    checkpoint = lanes._checkpoint_wal

    def recorded(engine) -> None:
        checkpoint(engine)
        checkpoints.append(threading.get_ident())

    monkeypatch.setattr(lanes, "CHECKPOINT_EVERY", 2)
    monkeypatch.setattr(lanes, "_checkpoint_wal", recorded)
    lane = DatabaseLane(vault, single_thread=True)

    def loop_connection_pragma() -> int:
        with lane.session() as session:
            return _dbapi(session).execute("PRAGMA wal_autocheckpoint").fetchone()[0]

    async def main():
        answers = []
        for i in range(4):
            answers.append(await _gathered(lane, [_audited(lane, vault, f"wal-{i}")]))
            for _ in range(500):  # a checkpoint on its thread finishes while the loop turns
                if len(checkpoints) >= (i + 1) // 2:
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


@sqlite_only
def test_a_stalled_audit_sink_never_stalls_the_loop(vault, monkeypatch):
    """The sink's socket I/O (a TCP connect that hangs until its 2 s timeout) runs on a thread of its own."""
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
    lane = DatabaseLane(vault, single_thread=True)

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


@sqlite_only
def test_connections_go_back_closed_when_the_lane_or_a_loop_ends_and_queued_reads_still_run(vault):
    """A loop's kept connection has no busy timeout: it never returns to the pool. The connections of loops that
    have ended are given back; reads still queued when the lane closes run (waiting for the lock) and are answered."""
    lane = DatabaseLane(vault, single_thread=True)
    for i in range(20):  # more loops than the pool has connections (8 + 8 overflow)
        assert _batch(lane, [_audited(lane, vault, f"loops-{i}")])[0][:2] == (f"loops-{i}", None)
    assert vault.engine.pool.checkedout() == 1  # only the newest loop's connection is out
    other = _hold_write_lock(vault)

    async def close_while_retrying():
        waiting = asyncio.ensure_future(lane.run(_audited(lane, vault, "closed-while-waiting")))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # the lock is taken: the read waits
        threading.Timer(0.2, other.rollback).start()
        lane.close()  # as at the lifespan's end: the queued read runs, waiting for the lock
        return await asyncio.wait_for(waiting, 5)

    try:
        answer = asyncio.run(close_while_retrying())
    finally:
        other.close()
    assert answer == "closed-while-waiting"
    gc.collect()
    assert vault.engine.pool.checkedout() == 0
    pooled = [vault.engine.connect() for _ in range(vault.engine.pool.checkedin())]
    try:
        assert pooled and {c.exec_driver_sql("PRAGMA busy_timeout").scalar() for c in pooled} == {10000}
    finally:
        for connection in pooled:
            connection.close()


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"])
def test_postgres_reads_use_the_pool_one_transaction_each(backend, request):
    require_pg()
    vault = request.getfixturevalue("vault")
    lane = DatabaseLane(vault, single_thread=False)

    def bound() -> tuple[object, object]:
        with lane.session() as session:
            append_tagged_event(session, vault, "pg-pooled")
            session.commit()
            return session.get_bind(), session.info.get("audit.defer")

    assert asyncio.run(lane.run(bound)) == (vault.engine, None)  # written in its own transaction, not deferred
    lane.close()
    assert _tags(vault, "pg-") == {"pg-pooled"}


def test_reads_through_the_app_stay_audited(client, vault):
    person = register(client, username="lane.user")
    headers = login(client, "lane.user")
    record_id = upload(client, headers, png_bytes(b"lane"), title="lane").json()["record_id"]
    for _ in range(3):
        assert client.get(f"/v1/records/{record_id}", headers=headers).status_code == 200
    assert client.get("/v1/records", headers=headers).status_code == 200
    assert client.get(f"/v1/records/{record_id}/content", headers=headers).content == png_bytes(b"lane")
    log = client.get("/v1/patients/me/access-log", headers=headers).json()["items"]
    assert sum(e["action"] == "record.read" for e in log) == 3
    assert person["patient_id"]
    with vault.session() as session:
        check_chains(session)
        assert session.get(ChainHead, 0) is not None
