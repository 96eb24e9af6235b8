"""INT-1 for what authorisation reads: a grant's window, scope and parties, a break-glass claim's window, a record's
category and label. An edit in the database is detected, access denied (integrity-failure, no data), and an alert
raised (audit `alert.raised` with reason `integrity` and a webhook call); migration 0009 seals existing rows."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select, text, update

from audit.models import AuditEvent
from consent.models import BreakGlass, Grant
from tests.helpers import login, png_bytes, register, staff, totp_code, upload
from tests.helpers.webhook import WebhookReceiver
from vault.access import integrity
from vault.db.models import Record


@pytest.fixture
def hook(vault):
    receiver = WebhookReceiver()
    object.__setattr__(vault.settings, "alert_webhook", receiver.url)
    yield receiver.wait
    receiver.close()


@pytest.fixture
def people(client, vault):
    object.__setattr__(vault.settings, "idle_timeout_seconds", 10**7)
    object.__setattr__(vault.settings, "token_ttl_seconds", 10**7)
    register(client, username="pat-int")
    patient = login(client, "pat-int")
    doctor = staff(client, vault, "doctor", "dr-int")
    secret = doctor.pop("_secret")
    lab = upload(client, patient, png_bytes(b"lab"), category="lab_report").json()["record_id"]
    exam = upload(client, patient, png_bytes(b"exam"), category="exam_report").json()["record_id"]
    special = upload(client, patient, png_bytes(b"hiv"), category="lab_report", label="special").json()["record_id"]
    with vault.session() as session:
        patient_id = session.get(Record, lab).patient_id
    return dict(patient=patient, doctor=doctor, secret=secret, lab=lab, exam=exam, special=special,
                patient_id=patient_id)


def _grant(client, clock, people, **overrides) -> str:
    body = {"grantee": "dr-int", "record_ids": [people["lab"]], "categories": [], "actions": ["view"],
            "purpose": "consult 7", "expires_at": (clock() + dt.timedelta(hours=2)).isoformat(), **overrides}
    response = client.post("/v1/grants", headers=people["patient"], json=body)
    assert response.status_code == 201, response.text
    return response.json()["grant_id"]


def _edit(vault, model, row_id: str, **values) -> None:
    with vault.session() as session:
        session.execute(update(model).where(model.id == row_id).values(**values))
        session.commit()


def _integrity(response) -> None:
    assert response.status_code == 500, response.text
    assert response.json()["type"].endswith(":integrity-failure")
    assert "record_id" not in response.json()  # no data


def _alerts(vault) -> list[AuditEvent]:
    with vault.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == "alert.raised",
                                                             AuditEvent.reason == "integrity")))


# Each edit widens what the doctor may do; each must be caught. (column, new value given the fixture's people)
WIDENINGS = {
    "expires_at": lambda p, now: now + dt.timedelta(days=365),
    "not_before": lambda p, now: now - dt.timedelta(days=365),
    "record_ids": lambda p, now: json.dumps([p["lab"], p["exam"]]),
    "categories": lambda p, now: json.dumps(["lab_report", "exam_report"]),
    "include_future": lambda p, now: True,
    "actions": lambda p, now: json.dumps(["download", "view"]),
}


@pytest.mark.parametrize("column", sorted(WIDENINGS))
def test_a_grant_edited_in_the_database_is_refused_and_alerted(client, vault, clock, people, hook, column):
    grant_id = _grant(client, clock, people)
    doctor = people["doctor"]
    assert client.get(f"/v1/records/{people['lab']}", headers=doctor).status_code == 200
    _edit(vault, Grant, grant_id, **{column: WIDENINGS[column](people, clock())})
    _integrity(client.get(f"/v1/records/{people['lab']}", headers=doctor))
    alerts = _alerts(vault)
    assert [a.grant_id for a in alerts] == [grant_id]
    with vault.session() as session:
        denial = session.scalars(select(AuditEvent).where(AuditEvent.action == "record.read",
                                                          AuditEvent.outcome == "deny")).one()
    assert denial.reason == "integrity"
    payload = hook()[0]
    assert payload["kind"] == "integrity" and payload["rows"] == [f"grant:{grant_id}"]
    assert people["patient_id"] not in json.dumps(payload)  # pseudonyms only
    # The edited grant is absent everywhere it would have counted.
    assert client.get("/v1/shared", headers=doctor).json() == []


def test_the_grantee_moved_to_another_doctor_is_refused(client, vault, clock, people, hook):
    grant_id = _grant(client, clock, people)
    other = staff(client, vault, "doctor", "dr-int-2")
    other.pop("_secret")
    with vault.session() as session:
        other_id = session.scalars(text("SELECT id FROM accounts WHERE username = 'dr-int-2'")).one()
    _edit(vault, Grant, grant_id, grantee_id=other_id)
    _integrity(client.get(f"/v1/records/{people['lab']}", headers=other))
    assert [a.grant_id for a in _alerts(vault)] == [grant_id]


def test_a_withdrawal_undone_in_the_database_does_not_revive_the_grant(client, vault, clock, people, hook):
    grant_id = _grant(client, clock, people)
    assert client.delete(f"/v1/grants/{grant_id}", headers=people["patient"]).status_code == 200
    assert client.get(f"/v1/records/{people['lab']}", headers=people["doctor"]).status_code == 404
    with vault.session() as session:
        row = session.get(Grant, grant_id)
        # The withdrawal re-sealed the row over its revoked_at (and the live form no longer verifies).
        assert integrity.grant_intact(vault, row, revoked_at=row.revoked_at, tag=row.integrity_mac)
        assert not integrity.grant_intact(vault, row, revoked_at=None, tag=row.integrity_mac)
    _edit(vault, Grant, grant_id, revoked_at=None)
    _integrity(client.get(f"/v1/records/{people['lab']}", headers=people["doctor"]))
    assert [a.grant_id for a in _alerts(vault)] == [grant_id]


def test_a_sound_grant_still_opens_what_it_names_beside_an_edited_one(client, vault, clock, people, hook):
    sound = _grant(client, clock, people)
    edited = _grant(client, clock, people, record_ids=[people["exam"]])
    _edit(vault, Grant, edited, record_ids=json.dumps([people["exam"], people["special"]]))
    response = client.get(f"/v1/records/{people['lab']}", headers=people["doctor"])
    assert response.status_code == 200  # the sound grant allows; the edited one counted as absent
    _integrity(client.get(f"/v1/records/{people['special']}", headers=people["doctor"]))
    assert {a.grant_id for a in _alerts(vault)} == {edited}
    with vault.session() as session:
        allowed = session.scalars(select(AuditEvent).where(AuditEvent.action == "record.read",
                                                           AuditEvent.outcome == "allow")).one()
    assert allowed.grant_id == sound


def test_withdrawing_an_edited_grant_keeps_it_detectable(client, vault, clock, people, hook):
    grant_id = _grant(client, clock, people)
    _edit(vault, Grant, grant_id, record_ids=json.dumps([people["lab"], people["special"]]))
    assert client.delete(f"/v1/grants/{grant_id}", headers=people["patient"]).status_code == 200
    assert [a.grant_id for a in _alerts(vault)] == [grant_id]
    _edit(vault, Grant, grant_id, revoked_at=None)  # the withdrawal did not re-seal the edited scope
    _integrity(client.get(f"/v1/records/{people['special']}", headers=people["doctor"]))


def test_a_grant_without_a_tag_or_with_a_foreign_suite_tag_is_refused(client, vault, clock, people, hook):
    grant_id = _grant(client, clock, people)
    with vault.session() as session:
        tag = session.get(Grant, grant_id).integrity_mac
    _edit(vault, Grant, grant_id, integrity_mac=tag[:1] + bytes([2]) + tag[2:])  # SM suite: this vault has no key
    _integrity(client.get(f"/v1/records/{people['lab']}", headers=people["doctor"]))
    _edit(vault, Grant, grant_id, integrity_mac=None)
    _integrity(client.get(f"/v1/records/{people['lab']}", headers=people["doctor"]))
    _edit(vault, Grant, grant_id, integrity_mac=tag)
    assert client.get(f"/v1/records/{people['lab']}", headers=people["doctor"]).status_code == 200


def test_a_breakglass_claim_extended_in_the_database_is_refused(client, vault, clock, people, hook):
    clock.advance(seconds=60)
    claim = client.post("/v1/breakglass", headers=people["doctor"], json={
        "patient_id": people["patient_id"], "reason": "unconscious patient in ER, allergy check",
        "otp": totp_code(people["secret"], clock())})
    assert claim.status_code == 201, claim.text
    claim_id = claim.json()["claim_id"]
    assert client.get(f"/v1/records/{people['lab']}", headers=people["doctor"]).status_code == 200
    clock.advance(hours=1, seconds=1)
    _edit(vault, BreakGlass, claim_id, expires_at=clock() + dt.timedelta(days=30))
    _integrity(client.get(f"/v1/records/{people['lab']}", headers=people["doctor"]))
    assert [a.grant_id for a in _alerts(vault)] == [claim_id]


@pytest.mark.parametrize(("column", "value"), [("category", "exam_report"), ("label", "normal"),
                                               ("category_enc", None), ("label_enc", None)])
def test_a_record_whose_category_or_label_was_edited_is_refused_and_alerted(client, vault, clock, people, hook,
                                                                             column, value):
    # A category grant on exam reports: moving the special lab sheet into it (or dropping its label) must not open it.
    _grant(client, clock, people, record_ids=[], categories=["exam_report"], include_future=True)
    _edit(vault, Record, people["special"], **{column: value})
    for headers in (people["doctor"], people["patient"]):  # the owner is refused too: the row is not what was sealed
        _integrity(client.get(f"/v1/records/{people['special']}", headers=headers))
        _integrity(client.get(f"/v1/records/{people['special']}/content", headers=headers))
    alerts = _alerts(vault)
    assert len(alerts) == 4 and {a.resource_id for a in alerts} == {people["special"]}
    payload = hook()[0]
    assert payload["kind"] == "integrity" and payload["rows"] == [f"record:{people['special']}"]


def test_migration_0009_seals_existing_rows(client, vault, clock, people):
    from vault.db import engine as db

    grant_id = _grant(client, clock, people)
    # Back to the schema before 0009: its columns (and those of later revisions) gone, its revision not applied.
    with vault.engine.begin() as conn:
        for table, column in (("records", "category_enc"), ("grants", "integrity_mac"),
                              ("breakglass", "integrity_mac"), ("grants", "purpose_salt_enc")):
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(text("DROP INDEX ix_audit_events_actor_denials"))  # 0011's
        conn.execute(text("UPDATE alembic_version SET version_num = '0008'"))
        conn.execute(text("UPDATE records SET label_enc = NULL WHERE id = :id"), {"id": people["exam"]})
    with pytest.raises(RuntimeError, match="needs the vault's keys"):
        db.migrate(vault.engine)
    created = db.migrate(vault.engine, keys=vault.keys, suite=1, keystore=vault.keystore)
    assert created == []  # the integrity key existed (created and audited at start-up)
    for record in (people["lab"], people["exam"], people["special"]):
        assert client.get(f"/v1/records/{record}", headers=people["patient"]).status_code == 200
    assert client.get(f"/v1/records/{people['lab']}", headers=people["doctor"]).status_code == 200
    with vault.session() as session:
        assert session.get(Grant, grant_id).integrity_mac is not None
