"""Deferred audit events (audit.trail: `DEFER_KEY`, `Deferred`, `append_linked`): the events of the read fast path's
batches are kept as values while the reads run and linked, hashed and written together before the batch's COMMIT.

What must hold: the chains read back exactly as if every event had been written when it was appended; a deferring
session writes nothing when it appends; its commit hands its events to the enclosing transaction and its rollback
drops them; events are linked onto the heads as they are when written, so a writer that moved a head in between
cannot fork a chain; a missing head row writes nothing."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from sqlalchemy import func, select

from audit import trail
from audit.models import AuditEvent
from tests.helpers.chains import check_chains
from tests.helpers.events import append_tagged_event


def _stored(vault, prefix: str) -> dict[str, str]:
    """request id → stored hash of the events whose request id starts with `prefix`."""
    with vault.session() as session:
        rows = session.execute(select(AuditEvent.request_id, AuditEvent.hash)
                               .where(AuditEvent.request_id.like(f"{prefix}%"))).all()
    return dict(rows)


def _plain(vault, held: list):
    session = vault.session()
    session.info.update({trail.DEFER_KEY: True, trail.HELD_KEY: held})
    return session


def _count(vault, prefix: str) -> int:
    with vault.session() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent)
                              .where(AuditEvent.request_id.like(f"{prefix}%")))


def test_deferred_events_link_like_immediate_ones_and_nothing_is_written_before(vault):
    patient = str(uuid.uuid4())
    with vault.session() as session:  # an event written the ordinary way first: the batch continues its chain
        append_tagged_event(session, vault, "before", patient)
        session.commit()
    held: list[trail.Deferred] = []
    for i in range(12):  # several chains, several events per chain
        with _plain(vault, held) as session:
            assert append_tagged_event(session, vault, f"deferred-{i}", patient if i % 3 else None) is None
            session.commit()
    assert len(held) == 12 and _count(vault, "deferred-") == 0  # values only, nothing written yet
    with vault.engine.begin() as connection:
        views = trail.append_linked(connection, held)
    assert _stored(vault, "deferred-") == {view["request_id"]: view["hash"] for view in views}
    seqs = [view["seq"] for view in views if view["patient"] == views[1]["patient"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == 8  # one patient's events: one chain, in order
    with vault.session() as session:
        check_chains(session)


def test_a_commit_hands_events_to_the_holder_and_a_rollback_drops_them(vault):
    held: list[trail.Deferred] = []
    with _plain(vault, held) as session:
        append_tagged_event(session, vault, "kept")
        session.commit()
        append_tagged_event(session, vault, "dropped")  # appended with no transaction begun: rolled back all the same
        session.rollback()
        session.commit()
        append_tagged_event(session, vault, "never-committed")
    assert [item.event.request_id for item in held] == ["kept"]


def test_events_link_onto_the_heads_as_they_are_when_written_so_a_chain_never_forks(vault):
    """Another writer moves the head between the deferral and the write: the deferred event follows its event."""
    patient = str(uuid.uuid4())
    held: list[trail.Deferred] = []
    with _plain(vault, held) as session:
        append_tagged_event(session, vault, "fork-deferred", patient)
        session.commit()
    with vault.session() as session:
        written = append_tagged_event(session, vault, "fork-between", patient)
        session.commit()
    with vault.engine.begin() as connection:
        (view,) = trail.append_linked(connection, held)
    assert (view["seq"], view["prev_hash"]) == (written["seq"] + 1, written["hash"])
    with vault.session() as session:
        check_chains(session)


def test_a_chain_without_a_head_row_writes_nothing(vault):
    held: list[trail.Deferred] = []
    with _plain(vault, held) as session:
        append_tagged_event(session, vault, "headless-1")
        append_tagged_event(session, vault, "headless-2")
        session.commit()
    held[1] = dataclasses.replace(held[1], chain=99_999)  # no such chain (head rows cannot be deleted)
    with pytest.raises(RuntimeError, match="no head row"), vault.engine.begin() as connection:
        trail.append_linked(connection, held)
    assert _count(vault, "headless-") == 0
