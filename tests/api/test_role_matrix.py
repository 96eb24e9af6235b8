"""AC-1 / AC-3: every role × every endpoint, built from the route table. A new route without an entry fails here."""

from __future__ import annotations

import datetime as dt
import time

from tests.helpers import PASSWORD, login, png_bytes, register, staff, totp_code, upload
from tests.helpers.role_matrix import EXPECTED, PUBLIC, ROLES, STAFF

DENIED = (401, 403, 404)


def _routes(app) -> set[tuple[str, str]]:
    """Every served operation, from the app's own OpenAPI document (the route table clients see)."""
    return {(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item}


def test_every_route_has_a_policy_entry(app):
    assert _routes(app) == set(EXPECTED) | PUBLIC


def _fresh_code(clock, secret: str) -> str:
    """A TOTP code of a step no sign-in has used yet (break-glass steps up with one)."""
    clock.advance(seconds=60)
    return totp_code(secret, clock())


def test_role_by_endpoint_matrix(client, vault, clock, app):
    object.__setattr__(vault.settings, "idle_timeout_seconds", 10**7)
    patient = register(client, username="matrix-patient")
    headers = {"patient": login(client, "matrix-patient")}
    register(client, username="matrix-eraser")  # DELETE /v1/patients/me erases the caller: not the matrix patient
    eraser = login(client, "matrix-eraser")
    secrets = {}
    for role in STAFF:
        h = staff(client, vault, role, f"m-{role}")
        secrets[role] = h.pop("_secret")
        headers[role] = h
    record_id = upload(client, headers["patient"], png_bytes(b"m")).json()["record_id"]
    grant = client.post("/v1/grants", headers=headers["patient"], json={
        "grantee": "m-doctor", "record_ids": [record_id], "actions": ["view"], "purpose": "matrix",
        "expires_at": (clock() + dt.timedelta(days=1)).isoformat()}).json()
    export_id = client.post("/v1/audit/exports", headers=headers["auditor"], json={}).json()["export_id"]
    for _ in range(100):
        if client.get(f"/v1/audit/exports/{export_id}", headers=headers["auditor"]).json()["status"] == "done":
            break
        time.sleep(0.05)
    requester = staff(client, vault, "secadmin", "m-secadmin-2")  # two-person rule: m-secadmin approves its request
    requester.pop("_secret")
    request_id = client.post("/v1/keys/rotations", headers=requester, json={}).json()["request_id"]
    target = staff(client, vault, "doctor", "m-target")  # the account the account-admin routes act on
    target.pop("_secret")
    account_id = client.get("/v1/accounts", headers=headers["sysadmin"], params={"limit": 500}).json()["items"]
    account_id = next(a["id"] for a in account_id if a["username"] == "m-target")
    package_id = client.post("/v1/exports", headers=headers["patient"],
                             json={"passphrase": "matrix export passphrase"}).json()["export_id"]
    params = {"record_id": record_id, "grant_id": grant["grant_id"], "export_id": export_id, "request_id": request_id,
              "account_id": account_id, "package_id": package_id}
    bodies = {
        ("POST", "/v1/grants"): {"json": {"grantee": "m-escort", "categories": ["lab_report"], "actions": ["view"],
                                          "purpose": "matrix",
                                          "expires_at": (clock() + dt.timedelta(days=1)).isoformat()}},
        ("POST", "/v1/breakglass"): {"json": {"patient_id": patient["patient_id"], "reason": "matrix emergency test",
                                              "otp": _fresh_code(clock, secrets["doctor"])}},
        ("POST", "/v1/audit/exports"): {"json": {}},
        ("POST", "/v1/exports"): {"json": {"passphrase": "another matrix passphrase"}},
        ("POST", "/v1/records"): {"data": {"category": "other"}, "files": {"file": ("a.png", png_bytes(b"n"))}},
        ("PATCH", "/v1/records/{record_id}/lab-results"): {"json": {"row": 0, "field": "value", "value": "1"}},
        ("GET", "/v1/patients/me/lab-trends"): {"params": {"code": "GLU"}},
        ("POST", "/v1/patients/me/consents"): {"json": {"ocr": True}},
        ("DELETE", "/v1/patients/me"): {"json": {"password": PASSWORD}},
        ("POST", "/v1/accounts"): {"json": {"username": "m-created", "password": PASSWORD, "role": "doctor"}},
        ("PATCH", "/v1/accounts/{account_id}"): {"json": {"active": True}},
        ("PUT", "/v1/accounts/{account_id}/role"): {"json": {"role": "escort"}},
    }
    mismatches = []
    routes = sorted(EXPECTED, key=lambda r: (r == ("POST", "/v1/auth/logout"), r[0] == "DELETE", r))
    for method, path in routes:
        url = path.format(**params)
        for role in (None, *ROLES):
            extra = dict(bodies.get((method, path), {}))
            who = eraser if (method, path, role) == ("DELETE", "/v1/patients/me", "patient") else headers.get(role, {})
            response = client.request(method, url, headers=who, **extra)
            allowed = response.status_code not in DENIED
            if allowed != (role in EXPECTED[(method, path)]):
                mismatches.append((method, path, role, response.status_code))
    assert mismatches == []
