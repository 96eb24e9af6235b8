"""AUD-6 / PIPL-9: retention floors with a controlled clock, and archiving that keeps the log verifiable."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from audit import retention, verify
from audit.models import AuditEvent, Checkpoint
from tests.helpers import login, register
from vault.auditing import trail as audit_trail

UTC = dt.UTC


def at(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(("start", "months", "expected"), [
    (at(2026, 8, 31, 10), 6, at(2027, 2, 28, 10)),
    (at(2027, 8, 31, 10), 6, at(2028, 2, 29, 10)),   # leap year
    (at(2026, 3, 31), 6, at(2026, 9, 30)),
    (at(2026, 1, 15), 36, at(2029, 1, 15)),
    (at(2028, 2, 29), 12, at(2029, 2, 28)),
])
def test_calendar_months_clamp_to_the_end_of_the_month(start, months, expected):
    assert retention.add_months(start, months) == expected


def test_the_31_august_to_end_of_february_edge():
    event = at(2026, 8, 31, 10)
    # Six calendar months end on 28 Feb, but 184 days run to 3 March: the later bound wins.
    assert retention.protected_until(event, "record.read", retention_days=184) == at(2027, 3, 3, 10)
    assert not retention.prunable(event, "record.read", now=at(2027, 2, 28, 23, 59), retention_days=184)
    assert not retention.prunable(event, "record.read", now=at(2027, 3, 3, 9, 59, 59), retention_days=184)
    assert retention.prunable(event, "record.read", now=at(2027, 3, 3, 10), retention_days=184)


def test_defaults_and_long_retention():
    event = at(2026, 1, 1)
    assert not retention.prunable(event, "record.read", now=at(2026, 12, 31))           # default one year
    assert retention.prunable(event, "record.read", now=at(2027, 1, 1))
    assert not retention.prunable(event, "grant.create", now=at(2028, 12, 31))         # three years
    assert retention.prunable(event, "grant.create", now=at(2029, 1, 1))
    assert not retention.prunable(event, "audit.export", now=at(2027, 6, 1), retention_days=184)
    with pytest.raises(ValueError):
        retention.protected_until(event, "record.read", retention_days=183)


def _count(vault) -> int:
    with vault.session() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent))


def test_archive_prunes_only_expired_events_and_the_log_still_verifies(client, vault, clock, tmp_path):
    clock.now = at(2026, 1, 10)
    register(client, username="old-timer")
    login(client, "old-timer")
    old_events = _count(vault)
    clock.now = at(2026, 9, 1)
    login(client, "old-timer")
    young = _count(vault) - old_events

    # Day 200: nothing is a year old yet.
    result = audit_trail.archive(vault, out=tmp_path / "a0", now=at(2026, 7, 29))
    assert result["archived"] == 0 and _count(vault) == old_events + young

    # Archiving prunes a prefix of the log: it stops at the first event still protected, here the separate consents
    # given at registration (PIPL-1, kept three years). The prefix starts with the vault's start-up events (its
    # service keys' creation, stamped by the test clock's real "now"), so the archive runs more than a year after
    # those too.
    with vault.session() as session:
        first_kept = session.scalar(select(func.min(AuditEvent.id)).where(AuditEvent.action == "consent.give"))
        expired = session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.id < first_kept))
    assert 0 < expired < old_events
    result = audit_trail.archive(vault, out=tmp_path / "a1", now=at(2028, 1, 11))
    assert result["archived"] == expired
    assert verify.verify_bundle(tmp_path / "a1", audit_trail.signer(vault).vkey()).ok
    with vault.session() as session:
        tombstone = session.scalars(select(Checkpoint).where(Checkpoint.kind == "tombstone")).one()
    parsed = verify.verify_note(tombstone.note, audit_trail.signer(vault).vkey())
    assert list(parsed.extensions) == [f"pruned-below {result['below_leaf']} {result['archive_sha256']}"]
    # Everything left still exports and verifies across the gap.
    login(client, "old-timer")
    report = verify.verify_bundle(_export(vault, tmp_path / "after"), audit_trail.signer(vault).vkey())
    assert report.ok, report.problems
    # A second archive run at the same time finds nothing more to remove.
    assert audit_trail.archive(vault, out=tmp_path / "a2", now=at(2028, 1, 11))["archived"] == 0


def _export(vault, out):
    audit_trail.write_export(vault, since=None, until=None, out=out)
    return out


def test_pruning_without_a_permit_is_refused(client, vault):
    from sqlalchemy.exc import DBAPIError

    register(client, username="keepme")
    audit_trail.checkpoint_now(vault)
    with pytest.raises(DBAPIError, match="append-only"):
        with vault.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM audit_events")
