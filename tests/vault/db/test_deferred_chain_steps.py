"""Deferred chain steps (audit.trail.DeferredChains): the audit events of a group transaction (vault/group_commit.py)
are linked in memory as its units append them and written in one go at its commit.

What must hold: the chains read back exactly as if every event had been written when it was appended; a unit's
rollback takes its own events and nothing else, even after an ORM read wrote the batch's events into its savepoint;
such a read sees every event appended so far; and steps that do not continue their chain's head row are never
committed."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from audit.models import AuditEvent, ChainHead
from tests.helpers.chains import check_chains
from tests.helpers.events import append_tagged_event
from vault.db.fastpath.group_commit import GroupTransaction, TransactionLost
from vault.errors import NotFound
from vault.identity import Identity, RequestContext
from vault.records import service as records

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


def _stored(vault, prefix: str) -> dict[str, str]:
    """request id → stored hash of the events whose request id starts with `prefix`."""
    with vault.session() as session:
        rows = session.execute(select(AuditEvent.request_id, AuditEvent.hash)
                               .where(AuditEvent.request_id.like(f"{prefix}%"))).all()
    return dict(rows)


def _unit(group: GroupTransaction, work) -> None:
    """Run one unit as the lane does: its own session, closed (and what it left rolled back) at its end."""
    try:
        with group.session() as session:
            work(session)
    except (ValueError, NotFound):
        pass
    group.end_unit()


def test_steps_written_at_the_commit_link_like_immediate_ones(vault):
    patient = str(uuid.uuid4())
    with vault.session() as session:  # an event written the ordinary way first: the batch continues its chain
        append_tagged_event(session, vault, "before", patient)
        session.commit()
    exported: dict[str, dict] = {}
    with vault.engine.connect() as connection:
        group = GroupTransaction(vault, connection)
        for i in range(12):  # several chains, several events per chain
            def work(session, i=i):
                exported[f"deferred-{i}"] = append_tagged_event(session, vault, f"deferred-{i}", patient if i % 3 else None)
                session.commit()
            _unit(group, work)
        with vault.session() as other:  # nothing is written before the commit
            assert other.scalar(select(func.count()).select_from(AuditEvent)
                                .where(AuditEvent.request_id.like("deferred-%"))) == 0
        group.commit()
    assert _stored(vault, "deferred-") == {tag: event["hash"] for tag, event in exported.items()}
    seqs = [exported[f"deferred-{i}"]["seq"] for i in range(1, 12) if i % 3]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # one patient's events: one chain, in order
    with vault.session() as session:
        check_chains(session)


def test_a_rolled_back_unit_takes_back_only_its_own_steps_even_after_a_read_wrote_them(vault):
    """Unit B's ORM read writes the batch's steps so far (A's and its own) inside B's savepoint; B then fails. The
    rollback undoes those rows, so A's steps must be written again at the commit, and B's never."""
    patient = str(uuid.uuid4())
    with vault.engine.connect() as connection:
        group = GroupTransaction(vault, connection)

        def unit_a(session):
            append_tagged_event(session, vault, "kept-a", patient)
            session.commit()

        def unit_b(session):
            append_tagged_event(session, vault, "dropped-b", patient)
            seen = session.scalar(select(func.count()).select_from(AuditEvent)
                                  .where(AuditEvent.request_id.in_(["kept-a", "dropped-b"])))
            assert seen == 2  # the read sees every step appended so far
            raise ValueError("B fails after its read")

        def unit_c(session):
            append_tagged_event(session, vault, "kept-c", patient)
            session.execute(select(ChainHead.hash))  # a read that writes the steps, then the unit commits
            session.commit()
            append_tagged_event(session, vault, "dropped-c", patient)  # after its commit: rolled back at the unit's end

        for work in (unit_a, unit_b, unit_c):
            _unit(group, work)
        group.commit()
    assert set(_stored(vault, "kept-")) == {"kept-a", "kept-c"}
    assert _stored(vault, "dropped-") == {}
    with vault.session() as session:
        check_chains(session)


def test_a_denial_burst_counts_the_denials_of_its_own_batch(vault):
    """The burst count reads `audit_events` through the ORM: denials earlier in the same batch must count."""
    object.__setattr__(vault.settings, "alert_denials_per_minute", 3)
    prober = Identity(account_id=str(uuid.uuid4()), role="doctor", patient_id=None)
    with vault.engine.connect() as connection:
        group = GroupTransaction(vault, connection)
        for n in range(4):
            def work(session, n=n):
                records.read(session, vault, identity=prober, ctx=RequestContext(request_id=f"probe-{n}"),
                             record_id=f"00000000-0000-4000-8000-{n:012d}")
            _unit(group, work)
        group.commit()
    with vault.session() as session:
        alerts = session.scalars(select(AuditEvent).where(AuditEvent.action == "alert.raised")).all()
        assert [a.request_id for a in alerts] == ["probe-2"]
        assert session.scalar(select(func.count()).select_from(AuditEvent)
                              .where(AuditEvent.request_id.like("probe-%"), AuditEvent.outcome == "deny")) == 5
        check_chains(session)


def test_steps_that_do_not_continue_their_head_row_are_never_committed(vault):
    with vault.engine.connect() as connection:
        group = GroupTransaction(vault, connection)
        _unit(group, lambda session: (append_tagged_event(session, vault, "broken-1"), session.commit()))
        _unit(group, lambda session: (append_tagged_event(session, vault, "broken-2"), session.commit()))
        group._chains._committed[1].values["prev_hash"] = "f" * 64  # a bookkeeping error, however it came about
        with pytest.raises(TransactionLost):
            group.commit()
        group.rollback()
    assert _stored(vault, "broken-") == {}
    with vault.session() as session:
        check_chains(session)


def test_a_nested_savepoint_keeps_the_steps_before_it_and_refuses_steps_inside_it(vault):
    with vault.engine.connect() as connection:
        group = GroupTransaction(vault, connection)

        def work(session):
            append_tagged_event(session, vault, "nested-outer")
            try:
                with session.begin_nested():
                    raise ValueError("an optional sub-step fails")
            except ValueError:
                pass
            with pytest.raises(RuntimeError), session.begin_nested():
                append_tagged_event(session, vault, "nested-inner")
            session.commit()

        _unit(group, work)
        group.commit()
    assert set(_stored(vault, "nested-")) == {"nested-outer"}
    with vault.session() as session:
        check_chains(session)


def test_reads_of_other_tables_leave_the_steps_deferred(vault):
    """Only a statement on the trail's tables writes the steps early: a list read's query of its records must not
    write (and, when its unit ends, roll back) the batch's events each time."""
    from vault.db.models import Record

    with vault.engine.connect() as connection:
        group = GroupTransaction(vault, connection)
        written: list[int] = []

        def work(session):
            append_tagged_event(session, vault, "listed")
            session.commit()
            session.scalars(select(Record).limit(1)).all()
            written.append(connection.connection.dbapi_connection.execute(
                "SELECT count(*) FROM audit_events WHERE request_id = 'listed'").fetchone()[0])

        _unit(group, work)
        group.commit()
    assert written == [0] and set(_stored(vault, "listed")) == {"listed"}
