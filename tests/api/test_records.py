"""The foundation contract through the HTTP app: register → login → upload → list → read → download."""

import hashlib
import os

import pytest
from sqlalchemy import func, select

from audit.models import AuditEvent
from tests.helpers import (
    PASSWORD,
    blobs,
    consents,
    login,
    make_id_number,
    pdf_bytes,
    png_bytes,
    real_jpeg,
    register,
    stored,
    upload,
)
from vault.db.models import Account, Patient, Record
from vault.errors import PROBLEM_BASE

PROBLEM = "application/problem+json"


def _count(vault, model) -> int:
    with vault.session() as session:
        return session.scalar(select(func.count()).select_from(model))


def _blob_files(vault) -> list:
    return blobs.stored(vault.blobs) + blobs.leftovers(vault.blobs)


def _assert_problem(response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == PROBLEM_BASE + slug
    assert body["status"] == status
    assert body["title"]
    return body


def test_healthz_and_security_headers(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-request-id"]
    echoed = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"


def test_openapi_is_served(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/patients/register", "/v1/auth/login", "/v1/records", "/v1/records/{record_id}",
                 "/v1/records/{record_id}/content", "/v1/patients/me", "/healthz"):
        assert path in spec["paths"]


def test_round_trip_returns_exact_bytes(client, vault):
    patient = register(client, username="roundtrip", real_name="王小明", id_number="11010519491231002X",
                       phone="+86 138 0013 8000")
    headers = login(client, "roundtrip")
    # Bytes after %%EOF are dropped by the hygiene pass: the sanitized copy is the record, returned byte for byte.
    sent = pdf_bytes("glucose 5.6 mmol/L " + os.urandom(150_000).hex()) + os.urandom(1000)
    data = stored(sent)
    assert data != sent and len(data) > 300_000
    created = upload(client, headers, sent, title="血常规 2026-11", filename="report.pdf",
                     content_type="application/pdf")
    assert created.status_code == 201, created.text
    record = created.json()
    assert record["content_type"] == "application/pdf"
    assert record["size_bytes"] == len(data)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["title"] == "血常规 2026-11"

    listed = client.get("/v1/records", headers=headers).json()
    assert [r["record_id"] for r in listed["items"]] == [record["record_id"]]
    meta = client.get(f"/v1/records/{record['record_id']}", headers=headers).json()
    assert meta == record
    content = client.get(f"/v1/records/{record['record_id']}/content", headers=headers)
    assert content.status_code == 200
    assert content.content == data
    assert content.headers["content-type"] == "application/pdf"

    me = client.get("/v1/patients/me", headers=headers).json()
    assert me["patient_id"] == patient["patient_id"]
    assert me["real_name"] == "王小明"
    assert me["id_number_masked"] == "110105********002X"
    assert me["phone_masked"] == "138****8000"
    assert me["birth_date"] == "1949-12-31"


def test_list_is_paginated_with_a_cursor(client, clock):
    register(client, username="pager")
    headers = login(client, "pager")
    ids = []
    for n in range(5):
        clock.advance(seconds=1)
        ids.append(upload(client, headers, png_bytes(b"n%d" % n)).json()["record_id"])
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/records", headers=headers, params=params).json()
        seen += [r["record_id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    _assert_problem(client.get("/v1/records", headers=headers, params={"cursor": "!!notacursor"}), 422,
                    "invalid-input")


@pytest.mark.parametrize(
    ("id_number", "reason"),
    [("110105194912310021", "check-digit"), (make_id_number(birth="20230229"), "birth-date")],
)
def test_invalid_id_number_is_rejected_and_nothing_stored(client, vault, id_number, reason):
    response = client.post("/v1/patients/register", json={
        "username": "badid", "password": PASSWORD, "real_name": "李四", "id_number": id_number,
        "phone": "13800138000", "consents": consents(client)})
    body = _assert_problem(response, 422, "invalid-id-number")
    assert body["reason"] == reason
    assert id_number not in response.text
    assert _count(vault, Patient) == 0 and _count(vault, Account) == 0


def test_registration_rejects_unknown_fields_and_duplicates(client, vault):
    base = {"username": "Alice", "password": PASSWORD, "real_name": "艾丽丝", "id_number": make_id_number(),
            "phone": "13900139000", "consents": consents(client)}
    _assert_problem(client.post("/v1/patients/register", json={**base, "nationality": "x"}), 422, "validation-error")
    assert client.post("/v1/patients/register", json=base).status_code == 201
    for variant in ("alice", "Ａｌｉｃｅ"):
        again = {**base, "username": variant, "id_number": make_id_number()}
        _assert_problem(client.post("/v1/patients/register", json=again), 409, "conflict")
    same_id = {**base, "username": "bob-other"}
    _assert_problem(client.post("/v1/patients/register", json=same_id), 409, "conflict")
    _assert_problem(client.post("/v1/patients/register", json={**base, "username": "weakling",
                                                                 "id_number": make_id_number(),
                                                                 "password": "password"}), 422, "weak-password")
    assert _count(vault, Patient) == 1


def test_validation_errors_never_echo_the_password(client):
    secret = "Sup3r-Secret-Value!"
    response = client.post("/v1/auth/login", json={"username": "x" * 300, "password": secret})
    _assert_problem(response, 422, "validation-error")
    assert secret not in response.text


def test_credentials_in_the_url_are_refused(client):
    _assert_problem(client.get("/healthz?password=hunter2"), 400, "credentials-in-url")
    _assert_problem(client.post("/v1/auth/login?access_token=abc", json={}), 400, "credentials-in-url")


def test_login_failures_are_uniform_and_audited(client, vault):
    register(client, username="carol")
    wrong = client.post("/v1/auth/login", json={"username": "carol", "password": "Wr0ng-Password!"})
    unknown = client.post("/v1/auth/login", json={"username": "nobody", "password": "Wr0ng-Password!"})
    for response in (wrong, unknown):
        _assert_problem(response, 401, "invalid-credentials")
    assert wrong.json()["detail"] == unknown.json()["detail"]
    with vault.session() as session:
        failed = session.scalars(select(AuditEvent).where(AuditEvent.action == "login_failed")).all()
    assert len(failed) == 2 and all(e.outcome == "deny" for e in failed)


def test_requests_without_a_valid_token_are_401(client):
    _assert_problem(client.get("/v1/records"), 401, "unauthenticated")
    _assert_problem(client.get("/v1/records", headers={"Authorization": "Bearer hv_forged"}), 401, "unauthenticated")


def test_expired_and_logged_out_tokens_stop_working(client, clock, vault):
    register(client, username="dave")
    headers = login(client, "dave")
    assert client.get("/v1/records", headers=headers).status_code == 200
    clock.advance(seconds=vault.settings.token_ttl_seconds + 1)
    _assert_problem(client.get("/v1/records", headers=headers), 401, "unauthenticated")
    headers = login(client, "dave")
    assert client.post("/v1/auth/logout", headers=headers).status_code == 204
    _assert_problem(client.get("/v1/records", headers=headers), 401, "unauthenticated")


def _no_trace(vault) -> None:
    assert _count(vault, Record) == 0
    assert _blob_files(vault) == []


def test_oversized_upload_is_refused_while_streaming(tmp_path, request, monkeypatch):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.conftest import CHEAP_KDF, PASSPHRASE, make_settings
    from vault.runtime import init_data_dir, open_vault

    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    settings = make_settings(tmp_path, "sqlite", max_upload_bytes=100_000)
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    small = open_vault(settings, PASSPHRASE)
    with TestClient(create_app(small), raise_server_exceptions=False) as client:
        register(client, username="big")
        headers = login(client, "big")
        _assert_problem(upload(client, headers, png_bytes() + b"\0" * 200_000), 413, "payload-too-large")
        _no_trace(small)

        def body():  # no Content-Length: the limit must bite while streaming
            boundary = b"xyz"
            yield b"--xyz\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\nlab_report\r\n"
            yield b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
            yield png_bytes()
            for _ in range(20):
                yield b"\0" * 10_000
            yield b"\r\n--" + boundary + b"--\r\n"

        response = client.post("/v1/records", headers={**headers, "Content-Type": "multipart/form-data; boundary=xyz"},
                               content=body())
        _assert_problem(response, 413, "payload-too-large")
        _no_trace(small)
    small.close()


def test_bad_uploads_are_refused_and_nothing_is_stored(client, vault):
    register(client, username="erin")
    headers = login(client, "erin")
    _assert_problem(upload(client, headers, b""), 422, "empty-upload")
    _assert_problem(upload(client, headers, b"just some text, not a document"), 415, "unsupported-media-type")
    _assert_problem(upload(client, headers, pdf_bytes(), content_type="image/png"), 415, "content-mismatch")
    _assert_problem(upload(client, headers, png_bytes(), filename="report.pdf", content_type="application/pdf"),
                    415, "content-mismatch")
    _assert_problem(upload(client, headers, png_bytes(), category="x-ray"), 422, "invalid-input")
    _assert_problem(upload(client, headers, png_bytes(), title="x" * 500), 422, "invalid-input")
    _assert_problem(client.post("/v1/records", headers=headers, json={"category": "other"}), 422, "invalid-input")
    _no_trace(vault)
    assert upload(client, headers, real_jpeg(), content_type="image/jpeg").status_code == 201


def test_truncated_upload_leaves_nothing(client, vault):
    register(client, username="frank")
    headers = login(client, "frank")
    body = (b"--b0\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\nlab_report\r\n"
            b"--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n" + png_bytes() * 50)
    response = client.post("/v1/records", content=body,
                           headers={**headers, "Content-Type": "multipart/form-data; boundary=b0"})
    _assert_problem(response, 400, "truncated-upload")
    _no_trace(vault)
    assert blobs.leftovers(vault.blobs) == []


def test_another_patient_cannot_reach_records_and_the_attempt_is_audited(client, vault):
    register(client, username="owner1")
    register(client, username="intruder")
    owner = login(client, "owner1")
    intruder = login(client, "intruder")
    record_id = upload(client, owner, png_bytes(b"private")).json()["record_id"]
    assert client.get("/v1/records", headers=intruder).json()["items"] == []
    for path in (f"/v1/records/{record_id}", f"/v1/records/{record_id}/content"):
        _assert_problem(client.get(path, headers=intruder), 404, "not-found")
    with vault.session() as session:
        denials = session.scalars(select(AuditEvent).where(AuditEvent.outcome == "deny",
                                                           AuditEvent.resource_id == record_id)).all()
    assert {e.action for e in denials} == {"record.read", "record.download"}
    assert all(e.reason == "no-policy" and e.actor_role == "patient" for e in denials)
    assert all(e.request_id and e.client_addr for e in denials)


def test_a_missing_record_is_404_and_audited(client, vault):
    register(client, username="grace")
    headers = login(client, "grace")
    missing = "00000000-0000-4000-8000-000000000000"
    _assert_problem(client.get(f"/v1/records/{missing}", headers=headers), 404, "not-found")
    _assert_problem(client.get("/v1/records/not-a-uuid", headers=headers), 422, "validation-error")
    _assert_problem(client.get("/v1/records/not-a-uuid/content", headers=headers), 422, "validation-error")
    _assert_problem(client.get("/v1/records/not-a-uuid"), 401, "unauthenticated")  # the credential comes first
    with vault.session() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.resource_id == missing)).one()
    assert (event.outcome, event.reason) == ("deny", "not-found")


def test_every_allowed_access_is_audited(client, vault):
    register(client, username="heidi")
    headers = login(client, "heidi")
    record_id = upload(client, headers, png_bytes(), category="other").json()["record_id"]
    client.get(f"/v1/records/{record_id}", headers=headers)
    client.get(f"/v1/records/{record_id}/content", headers=headers)
    client.get("/v1/records", headers=headers)
    client.get("/v1/patients/me", headers=headers)
    with vault.session() as session:
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))
    startup = [e for e in events if e.reason == "startup"]  # the service keys created when the vault opened
    assert {e.action for e in startup} == {"key.create"} and events[:len(startup)] == startup
    actions = [e.action for e in events[len(startup):]]
    assert actions == ["patient.register", "key.create", *["consent.give"] * 3, "login", "record.create", "record.read",
                       "record.download", "record.list", "patient.read"]
