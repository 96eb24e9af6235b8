"""Issue 14 item 2 over HTTP: a time without an offset, or out of range, is a 422 problem wherever a client sends one
(grant bodies, audit search, audit exports, the record list's cursor) and never a 500; the audit cursor is ASCII
digits within a BIGINT. On both databases."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from tests.helpers import login, png_bytes, register, staff, upload
from vault.errors import InvalidInput
from vault.identity import RequestContext
from vault.sharing import service as sharing

BAD_TIMES = ["2026-01-31T08:00:00", "0000-01-01T00:00:00Z", "10000-01-01T00:00:00Z", "9999-12-31T23:59:59-05:00",
             "0001-01-01T00:00:00+05:00", "9999-12-31T00:00:00Z", "1e400", "not a time"]


def _problem(response, status: int = 422) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()


@pytest.fixture
def patient(client, clock) -> dict:
    register(client, username="t-patient")
    headers = login(client, "t-patient")
    record_id = upload(client, headers, png_bytes(b"t")).json()["record_id"]
    return {"headers": headers, "record_id": record_id}


@pytest.fixture
def auditor(client, vault) -> dict:
    headers = staff(client, vault, "auditor", "t-auditor")
    headers.pop("_secret")
    return headers


def test_grant_times_need_an_offset_and_a_range(client, clock, patient):
    for field in ("expires_at", "not_before"):
        for value in BAD_TIMES:
            body = {"grantee": "nobody", "record_ids": [patient["record_id"]], "actions": ["view"],
                    "purpose": "times", "expires_at": (clock() + dt.timedelta(days=1)).isoformat(), field: value}
            problem = _problem(client.post("/v1/grants", headers=patient["headers"], json=body))
            assert problem["type"].endswith(":validation-error")
            assert [e["loc"] for e in problem["errors"]] == [["body", field]]
            assert value not in str(problem)  # the value is never echoed


def test_a_grant_window_in_another_offset_is_the_same_instant(client, clock, vault, patient):
    staff(client, vault, "doctor", "t-doctor")
    later = (clock() + dt.timedelta(hours=30)).astimezone(dt.timezone(dt.timedelta(hours=8)))
    response = client.post("/v1/grants", headers=patient["headers"], json={
        "grantee": "t-doctor", "record_ids": [patient["record_id"]], "actions": ["view"], "purpose": "times",
        "expires_at": later.isoformat()})
    assert response.status_code == 201, response.text
    assert dt.datetime.fromisoformat(response.json()["expires_at"]) == later


def test_the_grant_service_refuses_naive_times_too(vault, client, clock, patient):
    """Defence in depth: a caller inside the process cannot slip a naive time past the edge either."""
    from vault.accounts import tokens

    with vault.session() as session:
        identity = tokens.resolve(session, token=patient["headers"]["Authorization"].split()[1], now=vault.clock(),
                                  idle_timeout_seconds=vault.settings.idle_timeout_seconds)
        with pytest.raises(InvalidInput, match="expires_at must carry a UTC offset"):
            sharing.create_grant(session, vault, identity=identity, ctx=RequestContext(request_id="t"),
                                 grantee="nobody", record_ids=[patient["record_id"]], categories=[],
                                 include_future=False, actions=["view"], purpose="times", consult_ref=None,
                                 not_before=None, expires_at=dt.datetime(2030, 1, 1))


def test_audit_search_times_need_an_offset_and_a_range(client, auditor):
    for param in ("since", "until"):
        for value in BAD_TIMES:
            problem = _problem(client.get("/v1/audit/events", headers=auditor, params={param: value}))
            assert [e["loc"] for e in problem["errors"]] == [["query", param]]


def test_audit_search_with_offsets_answers(client, auditor):
    response = client.get("/v1/audit/events", headers=auditor,
                          params={"since": "2020-01-01T00:00:00+08:00", "until": "2999-01-01T00:00:00Z"})
    assert response.status_code == 200, response.text
    assert response.json()["items"]


def test_export_ranges_need_an_offset_and_a_range(client, auditor):
    for field in ("since", "until"):
        for value in BAD_TIMES:
            problem = _problem(client.post("/v1/audit/exports", headers=auditor, json={field: value}))
            assert [e["loc"] for e in problem["errors"]] == [["body", field]]


def test_audit_cursors_are_ascii_digits_within_a_bigint(client, auditor):
    for cursor in ("99999999999999999999", "9223372036854775808", "²", "١٢٣", "１２", "-1", "0x10"):
        problem = _problem(client.get("/v1/audit/events", headers=auditor, params={"cursor": cursor}))
        assert problem["type"].endswith(":invalid-input"), cursor
    response = client.get("/v1/audit/events", headers=auditor, params={"cursor": str(2**63 - 1), "limit": 1})
    assert response.status_code == 200, response.text


def test_record_cursors_carry_an_aware_time_in_range(client, patient):
    for stamp in ("2026-01-31T08:00:00", "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00",
                  "1800-01-01T00:00:00+00:00"):
        cursor = base64.urlsafe_b64encode(f"{stamp}|{patient['record_id']}".encode()).decode().rstrip("=")
        problem = _problem(client.get("/v1/records", headers=patient["headers"], params={"cursor": cursor}))
        assert problem["type"].endswith(":invalid-input"), stamp


def test_a_record_cursor_from_the_server_still_pages(client, patient):
    upload(client, patient["headers"], png_bytes(b"t2"))
    first = client.get("/v1/records", headers=patient["headers"], params={"limit": 1})
    assert first.status_code == 200 and first.json()["next_cursor"]
    second = client.get("/v1/records", headers=patient["headers"],
                        params={"limit": 1, "cursor": first.json()["next_cursor"]})
    assert second.status_code == 200, second.text
    assert second.json()["items"][0]["record_id"] != first.json()["items"][0]["record_id"]
