"""AC-1 / AC-3: every role × every endpoint, built from the route table. A new route without an entry fails here."""

from __future__ import annotations

import datetime as dt
import time

from tests.helpers import PASSWORD, login, png_bytes, register, staff, totp_code, upload
from tests.helpers.role_matrix import (
    CONSOLE_EXPECTED,
    CONSOLE_PUBLIC,
    EXPECTED,
    PUBLIC,
    ROLES,
    STAFF,
)

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


def _console_routes() -> set[tuple[str, str]]:
    """Every page of the console's router (mounted whole by api/console.mount: the matrix below runs them on the
    app)."""
    from api.console import routes

    return {(method, route.path) for route in routes() for method in route.methods - {"HEAD"}}


def test_every_console_route_has_a_policy_entry(client):
    assert _console_routes() == set(CONSOLE_EXPECTED) | CONSOLE_PUBLIC
    assert client.get("/login").status_code == 200  # mounted on the app
    assert not set(CONSOLE_EXPECTED) & CONSOLE_PUBLIC


def test_console_role_by_page_matrix(client, vault, clock, app):
    """Every console page × every role, signed in with the console's cookie (the API's own token) and its CSRF
    token: allowed exactly where CONSOLE_EXPECTED says; anonymous callers are sent to sign-in or refused."""
    from api.console.session import csrf_for

    object.__setattr__(vault.settings, "idle_timeout_seconds", 10**7)
    patient = register(client, username="cm-patient")
    tokens = {"patient": login(client, "cm-patient")["Authorization"].split()[1]}
    register(client, username="cm-eraser")  # POST /account/erase erases the caller: not the matrix patient
    eraser = login(client, "cm-eraser")["Authorization"].split()[1]
    secrets = {}
    for role in STAFF:
        h = staff(client, vault, role, f"cm-{role}")
        secrets[role] = h.pop("_secret")
        tokens[role] = h["Authorization"].split()[1]
    bearer = {"Authorization": f"Bearer {tokens['patient']}"}
    record_id = upload(client, bearer, png_bytes(b"cm"), category="other").json()["record_id"]
    grant = client.post("/v1/grants", headers=bearer, json={
        "grantee": "cm-doctor", "record_ids": [record_id], "actions": ["view", "download"], "purpose": "matrix",
        "expires_at": (clock() + dt.timedelta(days=1)).isoformat()}).json()
    auditor = {"Authorization": f"Bearer {tokens['auditor']}"}
    export_id = client.post("/v1/audit/exports", headers=auditor, json={}).json()["export_id"]
    for _ in range(100):
        if client.get(f"/v1/audit/exports/{export_id}", headers=auditor).json()["status"] == "done":
            break
        time.sleep(0.05)
    requester = staff(client, vault, "secadmin", "cm-secadmin-2")  # two-person rule: cm-secadmin approves
    requester.pop("_secret")
    request_id = client.post("/v1/keys/rotations", headers=requester, json={}).json()["request_id"]
    target = staff(client, vault, "doctor", "cm-target")
    target.pop("_secret")
    sysadmin = {"Authorization": f"Bearer {tokens['sysadmin']}"}
    listed = client.get("/v1/accounts", headers=sysadmin, params={"limit": 500}).json()["items"]
    account_id = next(a["id"] for a in listed if a["username"] == "cm-target")
    package_id = client.post("/v1/exports", headers=bearer,
                             json={"passphrase": "console matrix passphrase"}).json()["export_id"]
    params = {"record_id": record_id, "grant_id": grant["grant_id"], "export_id": export_id, "row": 0,
              "request_id": request_id, "account_id": account_id, "package_id": package_id}
    bodies = {
        ("POST", "/records"): {"data": {"category": "other"}, "files": {"file": ("a.png", png_bytes(b"cn"))}},
        ("POST", "/records/{record_id}/values"): {"data": {"row": "0", "field": "value", "value": "1"}},
        ("POST", "/sharing"): {"data": {"grantee": "cm-escort", "record_ids": record_id, "actions": "view",
                                        "purpose": "matrix", "days": "1"}},
        ("POST", "/consents"): {"data": {"item": "ocr", "give": "yes"}},
        ("POST", "/breakglass"): {"data": {"patient_id": patient["patient_id"], "reason": "matrix emergency test",
                                           "otp": _fresh_code(clock, secrets["doctor"])}},
        ("POST", "/audit/exports"): {"data": {}},
        ("POST", "/accounts"): {"data": {"username": "cm-created", "password": PASSWORD, "role": "doctor"}},
        ("POST", "/accounts/{account_id}/active"): {"data": {"active": "yes"}},
        ("POST", "/security/role"): {"data": {"account_id": account_id, "role": "escort"}},
        ("POST", "/account/erase"): {"data": {"password": PASSWORD, "confirm": "yes"}},
        ("POST", "/export"): {"data": {"password": PASSWORD, "passphrase": "another console passphrase",
                                       "passphrase_again": "another console passphrase"}},
    }
    mismatches = []
    last = (("POST", "/sharing/{grant_id}/revoke"), ("POST", "/logout"))
    routes = sorted(CONSOLE_EXPECTED, key=lambda r: (last.index(r) if r in last else -1, r))
    for method, path in routes:
        url = path.format(**params)
        for role in (None, *ROLES):
            client.cookies.clear()
            headers = {}
            if role is not None:
                token = eraser if (method, path, role) == ("POST", "/account/erase", "patient") else tokens[role]
                client.cookies.set("hv_session", token)
                headers["x-csrf-token"] = csrf_for(token)
            response = client.request(method, url, headers=headers, follow_redirects=False,
                                      **bodies.get((method, path), {}))
            to_sign_in = response.status_code == 303 and response.headers["location"].startswith("/login?next=")
            allowed = response.status_code not in DENIED and not to_sign_in
            if allowed != (role in CONSOLE_EXPECTED[(method, path)]):
                mismatches.append((method, path, role, response.status_code))
    client.cookies.clear()
    assert mismatches == []
