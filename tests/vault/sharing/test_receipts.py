"""The consent receipt (issue 14 item 7): read through the gate and audited, the patient always, the grantee only while
the grant is live (revoked, expired: the same 404 as an unknown grant), anyone else 404; and no unsalted hash of the
purpose anywhere in what the vault answers, while the patient can still prove the purpose with the salt only they see.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select

from audit.models import AuditEvent
from consent import receipts
from tests.helpers import login, png_bytes, register, staff, upload

PURPOSE = "复诊"  # short on purpose: a plain SHA-256 of it would be found by trying every short text


@pytest.fixture
def world(client, vault, clock):
    object.__setattr__(vault.settings, "idle_timeout_seconds", 10**7)  # the clock moves by hours below
    object.__setattr__(vault.settings, "token_ttl_seconds", 10**7)
    owner = register(client, username="rc-owner")
    patient = login(client, "rc-owner")
    record = upload(client, patient, png_bytes(b"rc")).json()["record_id"]
    people = {"patient": patient, "patient_id": owner["patient_id"], "record": record,
              "stranger": login(client, register(client, username="rc-stranger")["username"])}
    for name in ("doctor", "other"):
        headers = staff(client, vault, "doctor", f"rc-{name}")
        headers.pop("_secret")
        people[name] = headers
    return people


def _grant(client, clock, world, hours: float = 24) -> dict:
    created = client.post("/v1/grants", headers=world["patient"], json={
        "grantee": "rc-doctor", "record_ids": [world["record"]], "actions": ["view"], "purpose": PURPOSE,
        "expires_at": (clock() + dt.timedelta(hours=hours)).isoformat()})
    assert created.status_code == 201, created.text
    return created.json()


def _receipt(client, headers, grant_id: str):
    return client.get(f"/v1/grants/{grant_id}/receipt", headers=headers)


def _events(vault) -> list[AuditEvent]:
    with vault.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == "grant.receipt")
                                    .order_by(AuditEvent.id)))


def _not_found(response) -> tuple:
    assert response.status_code == 404, response.text
    body = response.json()
    return body["type"], body["title"], body.get("detail")


def test_owner_and_live_grantee_read_it_and_every_read_is_audited(client, vault, clock, world):
    grant = _grant(client, clock, world)
    mine = _receipt(client, world["patient"], grant["grant_id"])
    theirs = _receipt(client, world["doctor"], grant["grant_id"])
    assert mine.status_code == theirs.status_code == 200
    assert mine.json() == theirs.json() == grant["receipt"]
    statement = receipts.verify(json.dumps(mine.json()))
    assert statement["format"] == receipts.FORMAT and statement["grant_id"] == grant["grant_id"]
    events = _events(vault)
    assert [(e.actor_role, e.outcome, e.resource_id) for e in events] == [
        ("patient", "allow", grant["grant_id"]), ("doctor", "allow", grant["grant_id"])]
    assert events[1].grant_id == grant["grant_id"]  # the grantee's read names the grant that allowed it
    assert all(e.patient_pseudonym and world["patient_id"] not in repr(vars(e)) for e in events)


@pytest.mark.parametrize("end", ["revoked", "expired"])
def test_a_grant_no_longer_live_keeps_its_receipt_from_the_grantee(client, vault, clock, world, end):
    grant = _grant(client, clock, world, hours=1)
    assert _receipt(client, world["doctor"], grant["grant_id"]).status_code == 200
    if end == "revoked":
        assert client.delete(f"/v1/grants/{grant['grant_id']}", headers=world["patient"]).status_code == 200
    else:
        clock.advance(hours=1, seconds=1)
    refused = _receipt(client, world["doctor"], grant["grant_id"])
    unknown = _receipt(client, world["doctor"], str(uuid.uuid4()))
    assert _not_found(refused) == _not_found(unknown)  # the same answer as a grant that never existed
    assert refused.headers["content-type"] == unknown.headers["content-type"]
    assert _receipt(client, world["patient"], grant["grant_id"]).status_code == 200  # the patient keeps it
    # The grantee's listing keeps the grant, not its receipt.
    listed = [g for g in client.get("/v1/grants", headers=world["doctor"]).json() if g["grant_id"] == grant["grant_id"]]
    assert listed and listed[0]["receipt"] is None and not listed[0]["active"]
    events = _events(vault)
    assert [(e.actor_role, e.outcome) for e in events] == [
        ("doctor", "allow"), ("doctor", "deny"), ("doctor", "deny"), ("patient", "allow")]
    assert events[1].resource_id == grant["grant_id"] and events[1].reason == "no-policy"
    assert events[2].reason == "not-found" and events[2].patient_pseudonym is None


def test_a_grant_not_yet_valid_keeps_its_receipt_from_the_grantee(client, vault, clock, world):
    created = client.post("/v1/grants", headers=world["patient"], json={
        "grantee": "rc-doctor", "record_ids": [world["record"]], "actions": ["view"], "purpose": PURPOSE,
        "not_before": (clock() + dt.timedelta(hours=2)).isoformat(),
        "expires_at": (clock() + dt.timedelta(hours=5)).isoformat()}).json()
    assert _receipt(client, world["doctor"], created["grant_id"]).status_code == 404
    clock.advance(hours=3)
    assert _receipt(client, world["doctor"], created["grant_id"]).status_code == 200


def test_anyone_else_gets_404_audited(client, vault, clock, world):
    grant = _grant(client, clock, world)
    auditor = staff(client, vault, "auditor", "rc-auditor")
    auditor.pop("_secret")
    answers = [_receipt(client, world[who], grant["grant_id"]) for who in ("other", "stranger")]
    answers.append(_receipt(client, auditor, grant["grant_id"]))
    answers.append(_receipt(client, world["other"], str(uuid.uuid4())))
    assert len({_not_found(a) for a in answers}) == 1
    events = _events(vault)
    assert [(e.actor_role, e.outcome, e.reason) for e in events] == [
        ("doctor", "deny", "not-found"), ("patient", "deny", "not-found"), ("auditor", "deny", "not-found"),
        ("doctor", "deny", "not-found")]
    assert all(e.patient_pseudonym is None for e in events)  # nothing about whose grant it is


def test_no_unsalted_hash_of_the_purpose_anywhere_and_the_patient_can_prove_it(client, vault, clock, world):
    plain = hashlib.sha256(PURPOSE.encode()).hexdigest()
    created = client.post("/v1/grants", headers=world["patient"], json={
        "grantee": "rc-doctor", "record_ids": [world["record"]], "actions": ["view"], "purpose": PURPOSE,
        "expires_at": (clock() + dt.timedelta(hours=3)).isoformat()})
    grant_id = created.json()["grant_id"]
    answers = [created, _receipt(client, world["patient"], grant_id), _receipt(client, world["doctor"], grant_id),
               client.get("/v1/grants", headers=world["patient"]), client.get("/v1/grants", headers=world["doctor"])]
    for answer in answers:
        assert answer.status_code in (200, 201)
        assert plain not in answer.text.lower() and "purpose_sha256" not in answer.text
    statement = receipts.verify(json.dumps(answers[2].json()))  # what the grantee (or a leak) holds
    assert statement["purpose_commitment"].startswith("hmac-sha256:")
    # The salt: to the patient only (creation and their listing), never to the grantee.
    salt = created.json()["purpose_salt"]
    mine = next(g for g in answers[3].json() if g["grant_id"] == grant_id)
    theirs = next(g for g in answers[4].json() if g["grant_id"] == grant_id)
    assert mine["purpose_salt"] == salt and len(bytes.fromhex(salt)) == receipts.SALT_BYTES
    assert theirs["purpose_salt"] is None and salt not in answers[2].text
    assert receipts.purpose_matches(statement, PURPOSE, bytes.fromhex(salt))
    assert not receipts.purpose_matches(statement, "复查", bytes.fromhex(salt))
    assert not receipts.purpose_matches(statement, PURPOSE, None)  # the receipt alone proves nothing about guesses


def test_receipts_issued_before_the_salt_still_verify_and_match():
    """A format /1 receipt (purpose as plain SHA-256, signed before migration 0010) stays checkable."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    body = {"format": receipts.FORMAT_V1, "grant_id": "g1",
            "purpose_sha256": hashlib.sha256(PURPOSE.encode()).hexdigest()}
    public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    old = json.dumps({"statement": body, "signature": base64.b64encode(key.sign(receipts._canonical(body))).decode(),
                      "public_key": public})
    statement = receipts.verify(old, public)
    assert receipts.purpose_matches(statement, PURPOSE, None)
    assert not receipts.purpose_matches(statement, "复查", None)


def test_receipt_decisions_equal_an_enforcer_holding_every_grant_policy(vault, clock):
    """The engine loads a grant's receipt policy only for `grant.receipt` on that grant: every decision must equal
    what a plain enforcer holding all policies of all live grants says (live, revoked, expired, future, other's)."""
    import casbin
    from casbin.model import Model

    from consent import engine, integrity
    from consent.models import Grant

    now, hour = clock(), dt.timedelta(hours=1)
    doc_a, doc_b, pat = (str(uuid.uuid4()) for _ in range(3))

    def grant(who, nbf=-1, exp=1, revoked=False) -> Grant:
        return Grant(id=str(uuid.uuid4()), patient_id=pat, grantee_id=who, record_ids="[]", categories="[]",
                     include_future=False, actions='["view"]', purpose_enc=b"x", consult_ref=None,
                     not_before=now + nbf * hour, expires_at=now + exp * hour, created_at=now - 2 * hour,
                     revoked_at=now - hour / 2 if revoked else None, receipt="{}")

    grants = [grant(doc_a), grant(doc_a, revoked=True), grant(doc_a, nbf=-3, exp=-1), grant(doc_a, nbf=1, exp=2),
              grant(doc_b)]
    key = bytes(range(32))
    for g in grants:
        g.integrity_mac = integrity.seal(key, integrity.grant_message(g, revoked_at=g.revoked_at), suite=1)
    with vault.session() as session:
        session.add_all(grants)
        session.commit()
    model = Model()
    model.load_model_from_text(engine.MODEL_TEXT)
    everything = casbin.Enforcer(model)
    everything.add_policies([list(p) for p in engine.ROLE_POLICIES])
    for g in grants:
        if g.revoked_at is None:
            everything.add_policies(engine.grant_policies(g))
    for doctor in (doc_a, doc_b):
        everything.add_grouping_policy(f"user:{doctor}", "role:doctor")
    allowed = []
    with vault.session() as session:
        for doctor in (doc_a, doc_b):
            for g in grants:
                request = engine.Request(account_id=doctor, role="doctor", own_patient_id=None, patient_id=pat,
                                         obj=f"grant:{g.id}", cls="-", action="grant.receipt")
                decision = engine.decide(session, request, now=now, key_for={1: key}.get)
                expected = everything.enforce(f"user:{doctor}", f"patient:{pat}", request.obj, "-", request.action,
                                              engine.stamp(now))
                assert decision.allowed == expected, (doctor, g.id)
                allowed.append((doctor, g.id) if decision.allowed else None)
        session.rollback()
    assert [a for a in allowed if a] == [(doc_a, grants[0].id), (doc_b, grants[4].id)]
