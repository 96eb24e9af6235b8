"""PIPL-1: separate consent for health data and the ID number against a versioned notice; OCR optional.

Register without both consent items → 422 and nothing stored; consent rows reference the notice hash; a new notice
version forces re-consent before further processing; declining OCR keeps the rest of the service.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from audit.models import AuditEvent
from tests.helpers import (
    PASSWORD,
    consents,
    login,
    make_id_number,
    pdf_bytes,
    png_bytes,
    register,
    staff,
    stored,
    upload,
)
from vault.db.models import Account, Consent, Patient, Record
from vault.labs import service as labs
from vault.patients import privacy

PROBLEM = "urn:healthvault:problem:"


def _count(vault, model) -> int:
    with vault.session() as session:
        return session.scalar(select(func.count()).select_from(model))


def _events(vault, *actions) -> list[AuditEvent]:
    with vault.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action.in_(actions)).order_by(AuditEvent.id)))


def _new_notice(tmp_path, vault, *, version: str, name: str = "notice.json") -> privacy.Notice:
    """Point the running vault at a new notice file (as an operator would with HEALTHVAULT_PRIVACY_NOTICE_PATH)."""
    document = json.loads(privacy.BUNDLED_NOTICE.read_text())
    document["version"] = version
    document["sections"][0]["text"]["en"] += " We now also keep exam images for ten years."
    path = tmp_path / name
    path.write_text(json.dumps(document, ensure_ascii=False))
    object.__setattr__(vault.settings, "privacy_notice_path", str(path))
    return privacy.load_notice(path)


def test_the_notice_is_public_bilingual_and_hashed(client):
    response = client.get("/v1/privacy-notice")
    assert response.status_code == 200
    body = response.json()
    assert body["hash"] == hashlib.sha256(privacy.BUNDLED_NOTICE.read_bytes()).hexdigest()
    assert body["version"] and {s["item"]: s["required"] for s in body["sections"]} == {
        "health_data": True, "id_number": True, "ocr": False}
    for section in body["sections"]:
        assert section["text"]["zh"] and section["text"]["en"] and section["title"]["zh"]


@pytest.mark.parametrize("change", [
    None,  # no consents object at all
    {"health_data": False},
    {"id_number": False},
    {"id_number": None},
    {"notice_version": "1999-01"},
])
def test_registration_without_both_consents_is_refused_and_stores_nothing(client, vault, change):
    id_number = make_id_number()
    body = {"username": "no-consent", "password": PASSWORD, "real_name": "赵六", "id_number": id_number,
            "phone": "13800138000"}
    if change is not None:
        body["consents"] = {k: v for k, v in {**consents(client), **change}.items() if v is not None}
    keks_before = vault.keystore.count_rows()["patient_keks"]
    response = client.post("/v1/patients/register", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"] == PROBLEM + "consent-required"
    assert "/v1/privacy-notice" in problem["detail"] and problem["notice_version"] == consents(client)["notice_version"]
    assert id_number not in response.text
    assert _count(vault, Patient) == 0 and _count(vault, Account) == 0 and _count(vault, Consent) == 0
    assert vault.keystore.count_rows()["patient_keks"] == keks_before
    assert _events(vault, "patient.register", "consent.give", "consent.withdraw") == []


def test_consent_rows_reference_the_notice_hash_and_are_audited(client, vault):
    notice = client.get("/v1/privacy-notice").json()
    patient = register(client, username="consenter", ocr=False)
    with vault.session() as session:
        rows = session.scalars(select(Consent).order_by(Consent.id)).all()
    assert [(r.item, r.given) for r in rows] == [("health_data", True), ("id_number", True), ("ocr", False)]
    assert {(r.patient_id, r.notice_version, r.notice_hash) for r in rows} == {
        (patient["patient_id"], notice["version"], notice["hash"])}
    events = _events(vault, "consent.give", "consent.withdraw")
    assert [(e.action, e.reason) for e in events] == [("consent.give", "health_data"), ("consent.give", "id_number"),
                                                      ("consent.withdraw", "ocr")]
    assert all(e.patient_pseudonym and e.patient_pseudonym != patient["patient_id"] for e in events)

    headers = login(client, "consenter")
    state = client.get("/v1/patients/me/consents", headers=headers).json()
    assert state["up_to_date"] is True and state["missing"] == [] and state["ocr"] is False
    assert state["items"]["health_data"]["notice_hash"] == notice["hash"]
    assert len(state["history"]) == 3


def test_consent_history_is_append_only_in_the_database(client, vault, backend):
    register(client, username="appendonly")
    for statement in ("UPDATE consents SET given = false", "DELETE FROM consents"):
        with pytest.raises(DBAPIError, match="append-only"):
            with vault.engine.begin() as conn:
                conn.execute(text(statement))
    if backend == "postgres":
        with pytest.raises(DBAPIError, match="append-only"):
            with vault.engine.begin() as conn:
                conn.execute(text("TRUNCATE consents"))
    assert _count(vault, Consent) == 3


def test_a_new_notice_version_forces_reconsent_before_processing(client, vault, clock, tmp_path):
    register(client, username="renotice")
    headers = login(client, "renotice")
    record_id = upload(client, headers, png_bytes(b"r"), category="other").json()["record_id"]
    staff(client, vault, "doctor", "dr-renotice")
    old = client.get("/v1/privacy-notice").json()
    new = _new_notice(tmp_path, vault, version="2026-02")
    assert client.get("/v1/privacy-notice").json()["hash"] == new.hash != old["hash"]

    expires = (clock() + dt.timedelta(days=1)).isoformat()
    processing = [
        ("POST", "/v1/records", {"data": {"category": "other"}, "files": {"file": ("a.png", png_bytes(b"x"))}}),
        ("GET", "/v1/records", {}),
        ("GET", f"/v1/records/{record_id}", {}),
        ("GET", f"/v1/records/{record_id}/content", {}),
        ("POST", "/v1/grants", {"json": {"grantee": "dr-renotice", "record_ids": [record_id], "actions": ["view"],
                                         "purpose": "consult", "expires_at": expires}}),
        ("GET", "/v1/patients/me/lab-trends", {"params": {"code": "GLU"}}),
        ("GET", f"/v1/records/{record_id}/lab-results/history", {}),
        ("PATCH", f"/v1/records/{record_id}/lab-results", {"json": {"row": 0, "field": "value", "value": "1"}}),
        ("POST", f"/v1/records/{record_id}/lab-results/extraction", {}),
    ]
    records_before = _count(vault, Record)
    for method, url, extra in processing:
        response = client.request(method, url, headers=headers, **extra)
        assert response.status_code == 403, (method, url, response.text)
        problem = response.json()
        assert problem["type"] == PROBLEM + "consent-required" and problem["notice_version"] == "2026-02"
        assert problem["missing"] == ["health_data", "id_number"]
    assert _count(vault, Record) == records_before
    denials = [e for e in _events(vault, "record.create", "record.list", "record.read", "record.download",
                                  "grant.create", "lab.read", "lab.correct", "record.update")
               if e.outcome == "deny"]
    assert len(denials) == len(processing) and {e.reason for e in denials} == {"consent-required"}

    # Knowing, deciding and leaving stay possible without re-consent.
    assert client.get("/v1/patients/me", headers=headers).status_code == 200
    assert client.get("/v1/patients/me/access-log", headers=headers).status_code == 200
    assert client.get("/v1/grants", headers=headers).status_code == 200
    state = client.get("/v1/patients/me/consents", headers=headers).json()
    assert state["up_to_date"] is False and state["notice_version"] == "2026-02"
    assert state["items"]["health_data"]["on_current_notice"] is False

    # Consent against the notice the client showed, which must be the current one.
    stale = client.post("/v1/patients/me/consents", headers=headers,
                        json={"notice_version": old["version"], "health_data": True, "id_number": True})
    assert stale.status_code == 422 and stale.json()["type"] == PROBLEM + "consent-required"
    renewed = client.post("/v1/patients/me/consents", headers=headers,
                          json={"notice_version": "2026-02", "health_data": True, "id_number": True})
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["up_to_date"] is True
    assert renewed.json()["ocr"] is False  # OCR was given on the old notice only: it must be given again too
    with vault.session() as session:
        latest = session.scalars(select(Consent).order_by(Consent.id.desc()).limit(2)).all()
    assert {(r.item, r.notice_version, r.notice_hash) for r in latest} == {
        ("health_data", "2026-02", new.hash), ("id_number", "2026-02", new.hash)}
    assert client.get(f"/v1/records/{record_id}", headers=headers).status_code == 200
    assert upload(client, headers, png_bytes(b"y"), category="other").status_code == 201

    # Editing the text in place without a new version still changes the hash: consent is to the exact text.
    document = json.loads((tmp_path / "notice.json").read_text())
    document["rights"]["en"] += " Changed."
    (tmp_path / "notice.json").write_text(json.dumps(document, ensure_ascii=False))
    time.sleep(0.01)
    assert client.get(f"/v1/records/{record_id}", headers=headers).status_code == 403


def test_withdrawing_a_required_consent_stops_processing_at_once(client, vault):
    register(client, username="withdrawer")
    headers = login(client, "withdrawer")
    assert client.get("/v1/records", headers=headers).status_code == 200
    response = client.post("/v1/patients/me/consents", headers=headers, json={"health_data": False})
    assert response.status_code == 200 and response.json()["missing"] == ["health_data"]
    assert client.get("/v1/records", headers=headers).status_code == 403
    assert [e.reason for e in _events(vault, "consent.withdraw")] == ["health_data"]


def test_consent_change_input_is_checked(client, vault):
    register(client, username="checker")
    headers = login(client, "checker")
    version = consents(client)["notice_version"]
    before = _count(vault, Consent)
    for body, status in (({}, 422), ({"notice_version": version}, 422), ({"ocr": True}, 422),
                         ({"notice_version": version, "ocr": "yes"}, 422),
                         ({"notice_version": version, "marketing": True}, 422)):
        assert client.post("/v1/patients/me/consents", headers=headers, json=body).status_code == status, body
    assert _count(vault, Consent) == before
    # Re-giving what is already given writes nothing.
    again = client.post("/v1/patients/me/consents", headers=headers,
                        json={"notice_version": version, "health_data": True, "ocr": True})
    assert again.status_code == 200 and _count(vault, Consent) == before
    doctor = staff(client, vault, "doctor", "dr-checker")
    doctor.pop("_secret")
    assert client.get("/v1/patients/me/consents", headers=doctor).status_code == 404


def _wait(client, headers, record_id, timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/records/{record_id}", headers=headers).json()
        if body["ocr_status"] != "pending":
            return body
        time.sleep(0.2)
    raise AssertionError("extraction did not finish")


def test_declining_ocr_keeps_the_service_and_extracts_nothing(client, vault):
    sheetgen = pytest.importorskip("tests.ocr.sheetgen")
    register(client, username="no-ocr", ocr=False)
    headers = login(client, "no-ocr")
    sheet = sheetgen.digital_pdf()
    created = upload(client, headers, sheet.data, category="lab_report", content_type="application/pdf")
    assert created.status_code == 201 and created.json()["ocr_status"] == "declined"
    record_id = created.json()["record_id"]
    time.sleep(0.3)
    body = client.get(f"/v1/records/{record_id}", headers=headers).json()
    assert body["ocr_status"] == "declined" and body["lab_results"] is None
    assert client.get(f"/v1/records/{record_id}/content", headers=headers).content == stored(sheet.data)
    assert _events(vault, "lab.extract") == []
    for method, url, extra in (
        ("PATCH", f"/v1/records/{record_id}/lab-results", {"json": {"row": 0, "field": "value", "value": "1"}}),
        ("GET", f"/v1/records/{record_id}/lab-results/history", {}),
        ("GET", "/v1/patients/me/lab-trends", {"params": {"code": "GLU"}}),
        ("POST", f"/v1/records/{record_id}/lab-results/extraction", {}),
    ):
        response = client.request(method, url, headers=headers, **extra)
        assert response.status_code == 409, (method, url, response.text)
        assert response.json()["type"] == PROBLEM + "ocr-declined"
        assert "/v1/patients/me/consents" in response.json()["detail"]
    assert upload(client, headers, pdf_bytes("exam"), category="exam_report").json()["ocr_status"] is None

    # Giving the OCR consent later: an explicit re-run reads the earlier upload, new uploads are read.
    version = consents(client)["notice_version"]
    given = client.post("/v1/patients/me/consents", headers=headers, json={"notice_version": version, "ocr": True})
    assert given.status_code == 200 and given.json()["ocr"] is True
    queued = client.post(f"/v1/records/{record_id}/lab-results/extraction", headers=headers)
    assert queued.status_code == 202 and queued.json()["ocr_status"] == "pending"
    done = _wait(client, headers, record_id)
    assert done["ocr_status"] in ("done", "needs_review"), done.get("ocr_error")
    assert {r["std_code"] or r["code"] for r in done["lab_results"]["results"]} >= {"GLU"}
    assert client.get("/v1/patients/me/lab-trends", headers=headers, params={"code": "GLU"}).status_code == 200

    # Withdrawing it stops future extraction, including a job already queued.
    withdrawn = client.post("/v1/patients/me/consents", headers=headers, json={"ocr": False})
    assert withdrawn.status_code == 200 and withdrawn.json()["ocr"] is False
    later = upload(client, headers, sheetgen.digital_pdf().data, category="lab_report",
                   content_type="application/pdf").json()
    assert later["ocr_status"] == "declined"
    extractions = len(_events(vault, "lab.extract"))
    assert labs.run_extraction(vault, record_id) == "declined"
    assert len(_events(vault, "lab.extract")) == extractions


def test_every_patient_route_is_classified_for_consent():
    from api.deps import CONSENT_EXEMPT, PROCESSING
    from tests.helpers.role_matrix import EXPECTED

    patient_routes = {route for route, roles in EXPECTED.items() if "patient" in roles}
    assert set(PROCESSING).isdisjoint(CONSENT_EXEMPT)
    assert patient_routes == set(PROCESSING) | CONSENT_EXEMPT


def test_a_malformed_notice_stops_start_up(vault, tmp_path):
    from api.app import create_app

    broken = json.loads(privacy.BUNDLED_NOTICE.read_text())
    broken["sections"] = [s for s in broken["sections"] if s["item"] != "id_number"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    object.__setattr__(vault.settings, "privacy_notice_path", str(path))
    with pytest.raises(privacy.NoticeError, match="sections must cover"):
        create_app(vault)
    for mutate, message in ((lambda d: d.update(version=""), "version"),
                            (lambda d: d["sections"][2].update(required=True), "ocr is optional"),
                            (lambda d: d["sections"][0]["text"].pop("zh"), "'zh' and 'en'")):
        document = json.loads(privacy.BUNDLED_NOTICE.read_text())
        mutate(document)
        with pytest.raises(privacy.NoticeError, match=message):
            privacy.parse_notice(json.dumps(document).encode())
