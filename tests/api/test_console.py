"""The browser console in process: cookie session, CSRF, headers, escaping, and that its pages reach data only
through the vault services (a revoked grant hides a record from the console exactly as from the API)."""

from __future__ import annotations

import re

import pytest

from tests.helpers import PASSWORD, login, make_id_number, make_phone, png_bytes, register, staff, upload
from tests.helpers.console import assert_console_headers, console_login, csrf_of

PAYLOAD = '<script>alert("x")</script>'


def test_register_sign_in_upload_and_read_through_the_console(client, vault):
    page = client.get("/register")
    assert page.status_code == 200 and "隐私" in page.text
    assert_console_headers(page)
    notice = client.get("/v1/privacy-notice").json()["version"]
    form = {"csrf": csrf_of(page.text), "notice_version": notice, "username": "c.patient", "password": PASSWORD,
            "real_name": "王芳", "id_number": make_id_number(), "phone": make_phone(), "health_data": "yes",
            "id_number_consent": "yes", "ocr": "yes"}
    done = client.post("/register", data=form, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/login?done=registered"
    csrf = console_login(client, "c.patient")
    cookie = next(c for c in client.cookies.jar if c.name == "hv_session")
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.path == "/"
    uploaded = client.post("/records", headers={"x-csrf-token": csrf}, data={"category": "other", "title": PAYLOAD},
                           files={"file": (PAYLOAD + ".png", png_bytes(b"c"), "image/png")}, follow_redirects=False)
    assert uploaded.status_code == 303, uploaded.text
    record_url = uploaded.headers["location"]
    assert re.fullmatch(r"/records/[0-9a-f-]{36}", record_url)
    listing = client.get("/records")
    assert_console_headers(listing)
    assert PAYLOAD not in listing.text and "&lt;script&gt;" in listing.text
    record = client.get(record_url)
    assert record.status_code == 200 and PAYLOAD not in record.text and "&lt;script&gt;alert" in record.text
    assert_console_headers(record)
    content = client.get(record_url + "/content")
    assert content.status_code == 200 and content.content == png_bytes(b"c")
    assert "sandbox" in content.headers["content-security-policy"]


def test_state_change_without_csrf_is_refused(client, vault):
    register(client, username="c.csrf")
    csrf = console_login(client, "c.csrf")
    for data in ({}, {"csrf": "0" * 64}):
        refused = client.post("/consents", data={"item": "ocr", "give": "no", **data})
        assert refused.status_code == 403
        assert_console_headers(refused)
    refused = client.post("/records", data={"category": "other"},
                          files={"file": ("a.png", png_bytes(b"z"), "image/png")})
    assert refused.status_code == 403
    assert client.get("/records").text.count("record-link") == 0  # nothing stored
    ok = client.post("/consents", data={"item": "ocr", "give": "no", "csrf": csrf}, follow_redirects=False)
    assert ok.status_code == 303
    login_without = client.post("/login", data={"username": "c.csrf", "password": PASSWORD})
    assert login_without.status_code == 403  # even sign-in needs the pre-session token (login CSRF)


def test_sign_out_ends_the_session_server_side(client, vault):
    register(client, username="c.out")
    csrf = console_login(client, "c.out")
    token = next(c.value for c in client.cookies.jar if c.name == "hv_session")
    out = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    bearer = client.get("/v1/records", headers={"Authorization": f"Bearer {token}"})
    assert bearer.status_code == 401  # the same server-side token: revoked, not just forgotten by the browser
    client.cookies.set("hv_session", token)
    assert client.get("/records", follow_redirects=False).status_code == 303


def test_no_cookie_redirects_to_sign_in_and_cookie_flags_under_tls(app, vault):
    from fastapi.testclient import TestClient

    with TestClient(app, base_url="https://testserver") as tls:
        register(tls, username="c.tls")
        page = tls.get("/records", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        login_page = tls.get("/login")
        form = {"csrf": csrf_of(login_page.text), "username": "c.tls", "password": PASSWORD}
        response = tls.post("/login", data=form, follow_redirects=False)
        assert response.status_code == 303
        set_cookie = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
        session = next(v for v in set_cookie if v.startswith("__Host-hv_session="))
        flags = {part.strip().lower() for part in session.split(";")}
        assert {"httponly", "secure", "samesite=strict", "path=/"} <= flags
        assert not any(f.startswith("domain") for f in flags)


def test_a_revoked_grant_hides_the_record_from_the_doctor(client, vault, clock):
    register(client, username="c.owner")
    bearer = login(client, "c.owner")
    record_id = upload(client, bearer, png_bytes(b"g"), category="other").json()["record_id"]
    doctor = staff(client, vault, "doctor", "c.doc")
    secret = doctor.pop("_secret")
    csrf = console_login(client, "c.owner")
    shared = client.post("/sharing", data={"csrf": csrf, "grantee": "c.doc", "record_ids": record_id,
                                           "actions": ["view", "download"], "purpose": PAYLOAD, "days": "3"},
                         follow_redirects=False)
    assert shared.status_code == 303, shared.text
    grant_url = shared.headers["location"]
    receipt = client.get(grant_url)
    assert PAYLOAD not in receipt.text and "&lt;script&gt;" in receipt.text and "grant_id" in receipt.text
    assert 'class="receipt salt"' in receipt.text  # the purpose salt: the patient's alone
    from tests.helpers import totp_code

    clock.advance(seconds=60)
    console_login(client, "c.doc", otp=totp_code(secret, clock()))
    assert record_id in client.get("/shared").text
    assert client.get(f"/records/{record_id}").status_code == 200
    doctors_page = client.get(grant_url)  # the grantee sees the receipt while the grant is live, never the salt
    assert "signature" in doctors_page.text and "salt" not in doctors_page.text
    csrf = console_login(client, "c.owner")
    revoked = client.post(grant_url + "/revoke", data={"csrf": csrf}, follow_redirects=False)
    assert revoked.status_code == 303
    log = client.get("/access-log")
    assert "c.doc" in log.text
    clock.advance(seconds=60)
    console_login(client, "c.doc", otp=totp_code(secret, clock()))
    assert record_id not in client.get("/shared").text
    assert client.get(f"/records/{record_id}").status_code == 404
    after = client.get(grant_url)  # the grant is still listed to the grantee, its receipt no longer
    assert after.status_code == 200 and "signature" not in after.text


def test_a_grant_that_has_not_started_is_shown_as_such_and_can_be_revoked(client, vault, clock):
    import datetime as dt

    register(client, username="c.later")
    bearer = login(client, "c.later")
    record_id = upload(client, bearer, png_bytes(b"later"), category="other").json()["record_id"]
    staff(client, vault, "doctor", "c.later.doc").pop("_secret")
    made = client.post("/v1/grants", headers=bearer, json={
        "grantee": "c.later.doc", "record_ids": [record_id], "actions": ["view"], "purpose": "下周复诊",
        "not_before": (clock() + dt.timedelta(days=2)).isoformat(),
        "expires_at": (clock() + dt.timedelta(days=5)).isoformat()})
    assert made.status_code == 201, made.text
    console_login(client, "c.later")
    listing = client.get("/sharing").text
    assert "尚未生效" in listing and "有效</" not in listing
    page = client.get(f"/sharing/{made.json()['grant_id']}").text
    assert "尚未生效" in page and "/revoke" in page


@pytest.mark.parametrize("path", ["/login", "/register", "/first-sign-in", "/static/console.css",
                                  "/static/htmx.min.js"])
def test_public_pages_carry_the_policy(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    if not path.startswith("/static"):
        assert_console_headers(response)
        assert "<style" not in response.text and "style=" not in response.text
        assert re.search(r"<script(?![^>]*\bsrc=)", response.text) is None  # no inline script


def test_next_is_local_only(client, vault):
    register(client, username="c.next")
    page = client.get("/login")
    form = {"csrf": csrf_of(page.text), "username": "c.next", "password": PASSWORD, "next": "//evil.example/x"}
    response = client.post("/login", data=form, follow_redirects=False)
    assert response.headers["location"] == "/"


def test_staff_first_sign_in_in_the_console(client, vault, clock):
    import pyotp

    from vault.accounts import service as accounts
    from vault.identity import RequestContext

    with vault.session() as session:
        accounts.create(session, vault, username="c.first", password="Initial-Passw0rd!", role="doctor",
                        ctx=RequestContext(request_id="t"), must_change_password=True)
    page = client.get("/login")
    first = client.post("/login", data={"csrf": csrf_of(page.text), "username": "c.first",
                                        "password": "Initial-Passw0rd!"}, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/first-sign-in"
    csrf = csrf_of(client.get("/first-sign-in").text)
    changed = client.post("/first-sign-in/password", data={"csrf": csrf, "username": "c.first",
                                                           "password": "Initial-Passw0rd!",
                                                           "new_password": PASSWORD})
    assert changed.status_code == 200, changed.text
    enrolled = client.post("/first-sign-in/totp", data={"csrf": csrf, "username": "c.first", "password": PASSWORD})
    assert enrolled.status_code == 200 and "<svg" in enrolled.text
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', enrolled.text).group(1)
    code = pyotp.TOTP(secret).at(clock().timestamp())
    done = client.post("/first-sign-in/activate", data={"csrf": csrf, "username": "c.first", "password": PASSWORD,
                                                        "otp": code}, follow_redirects=False)
    assert done.status_code == 303, done.text
    clock.advance(seconds=30)
    console_login(client, "c.first", otp=pyotp.TOTP(secret).at(clock().timestamp()))
    assert client.get("/shared").status_code == 200
    assert client.get("/records").status_code == 403  # a doctor has no records of their own to list


def test_dates_window_reaches_the_service(client, vault, clock):
    """The share form's window is checked by the sharing service (0 days is refused, as over the API)."""
    register(client, username="c.win")
    bearer = login(client, "c.win")
    record_id = upload(client, bearer, png_bytes(b"w"), category="other").json()["record_id"]
    staff(client, vault, "doctor", "c.windoc").pop("_secret")
    csrf = console_login(client, "c.win")
    refused = client.post("/sharing", data={"csrf": csrf, "grantee": "c.windoc", "record_ids": record_id,
                                            "actions": "view", "purpose": "p", "days": "0"})
    assert refused.status_code == 422


def test_auditor_search_export_and_key_pages(client, vault, clock):
    import time

    from tests.helpers import totp_code

    register(client, username="c.audited")
    auditor = staff(client, vault, "auditor", "c.aud")
    secret = auditor.pop("_secret")
    clock.advance(seconds=60)
    csrf = console_login(client, "c.aud", otp=totp_code(secret, clock()))
    found = client.get("/audit", params={"action": "login", "outcome": "allow"})
    assert found.status_code == 200 and 'class="actor"' in found.text
    assert_console_headers(found)
    assert client.get("/audit", params={"outcome": "maybe"}).status_code == 422
    assert client.get("/audit", params={"since": "not a date"}).status_code == 422
    started = client.post("/audit/exports", data={"csrf": csrf, "since": "", "until": ""}, follow_redirects=False)
    assert started.status_code == 303, started.text
    export_url = started.headers["location"]
    for _ in range(100):
        status = client.get(export_url)
        if 'id="export-download"' in status.text:
            break
        time.sleep(0.05)
    assert 'id="vkey"' in status.text and "healthvault audit verify" in status.text
    archive = client.get(export_url + "/archive")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/gzip"
    assert client.get("/keys").status_code == 200
    assert client.get("/records").status_code == 403


def test_break_glass_in_the_console_warns_and_counts_down(client, vault, clock):
    from tests.helpers import totp_code

    patient = register(client, username="c.bg-patient")
    doctor = staff(client, vault, "doctor", "c.bg-doc")
    secret = doctor.pop("_secret")
    clock.advance(seconds=60)
    csrf = console_login(client, "c.bg-doc", otp=totp_code(secret, clock()))
    form = client.get("/breakglass")
    assert form.status_code == 200 and 'role="alert"' in form.text
    short = client.post("/breakglass", data={"csrf": csrf, "patient_id": patient["patient_id"], "reason": "short"})
    assert short.status_code == 422
    not_an_id = client.post("/breakglass", data={"csrf": csrf, "patient_id": "王芳", "reason": "x" * 20})
    assert not_an_id.status_code == 422
    no_code = client.post("/breakglass", data={"csrf": csrf, "patient_id": patient["patient_id"],
                                               "reason": "unconscious at the emergency desk"})
    assert no_code.status_code == 401  # break-glass steps up with a fresh TOTP code, in the console too
    clock.advance(seconds=60)
    opened = client.post("/breakglass", data={"csrf": csrf, "patient_id": patient["patient_id"],
                                              "reason": "unconscious at the emergency desk",
                                              "otp": totp_code(secret, clock())})
    assert opened.status_code == 200 and 'class="countdown" data-expires="' in opened.text
    assert_console_headers(opened)
    bearer = login(client, "c.bg-patient")
    log = client.get("/v1/patients/me/access-log", headers=bearer).json()["items"]
    assert any(e["action"] == "breakglass" and e["actor_name"] == "c.bg-doc" for e in log)


def test_admin_pages_create_disable_and_move_roles(client, vault, clock):
    from tests.helpers import totp_code

    sysadmin = staff(client, vault, "sysadmin", "c.sys")
    sys_secret = sysadmin.pop("_secret")
    secadmin = staff(client, vault, "secadmin", "c.sec")
    sec_secret = secadmin.pop("_secret")
    clock.advance(seconds=60)
    csrf = console_login(client, "c.sys", otp=totp_code(sys_secret, clock()))
    made = client.post("/accounts", data={"csrf": csrf, "username": "c.newdoc", "password": PASSWORD,
                                          "role": "doctor"}, follow_redirects=False)
    assert made.status_code == 303
    listing = client.get("/accounts")
    assert "c.newdoc" in listing.text
    account_id = re.search(r'action="/accounts/([0-9a-f-]{36})/active"', listing.text.split("c.newdoc", 1)[1]).group(1)
    off = client.post(f"/accounts/{account_id}/active", data={"csrf": csrf, "active": "no"}, follow_redirects=False)
    assert off.status_code == 303
    assert client.post("/accounts", data={"csrf": csrf, "username": "c.admin2", "password": PASSWORD,
                                          "role": "sysadmin"}).status_code in (403, 422)  # admins stay CLI-only
    assert client.get("/security").status_code == 403  # AC-3: roles and rotations are the secadmin's
    clock.advance(seconds=60)
    csrf = console_login(client, "c.sec", otp=totp_code(sec_secret, clock()))
    moved = client.post("/security/role", data={"csrf": csrf, "account_id": account_id, "role": "escort"},
                        follow_redirects=False)
    assert moved.status_code == 303
    requested = client.post("/security/rotations", data={"csrf": csrf}, follow_redirects=False)
    assert requested.status_code == 303
    page = client.get("/security")
    assert "pending" in page.text
    request_id = re.search(r'/security/rotations/([0-9a-f-]{36})/approve', page.text).group(1)
    own = client.post(f"/security/rotations/{request_id}/approve", data={"csrf": csrf})
    assert own.status_code in (403, 409)  # two-person rule: not the requester
    assert client.get("/accounts").status_code == 403


def test_sign_in_next_drops_control_characters(client, vault):
    register(client, username="c.tab")
    page = client.get("/login")
    form = {"csrf": csrf_of(page.text), "username": "c.tab", "password": PASSWORD, "next": "/\t/evil.example"}
    assert client.post("/login", data=form, follow_redirects=False).headers["location"] == "/"


def test_a_plain_upload_form_carries_its_token_in_the_body(client, vault):
    """Without script the upload form posts multipart with the `csrf` field: accepted only with the right token,
    and a wrong one keeps nothing."""
    register(client, username="c.plain")
    csrf = console_login(client, "c.plain")
    wrong = client.post("/records", data={"csrf": "f" * 64, "category": "other"},
                        files={"file": ("a.png", png_bytes(b"w"), "image/png")}, follow_redirects=False)
    assert wrong.status_code == 403
    assert "record-link" not in client.get("/records").text
    right = client.post("/records", data={"csrf": csrf, "category": "other"},
                        files={"file": ("a.png", png_bytes(b"r"), "image/png")}, follow_redirects=False)
    assert right.status_code == 303 and right.headers["location"].startswith("/records/")
    assert client.get("/records").text.count("record-link") == 1


def test_declined_ocr_can_be_asked_for_after_consenting(client, vault):
    register(client, username="c.later", ocr=False)
    csrf = console_login(client, "c.later")
    uploaded = client.post("/records", headers={"x-csrf-token": csrf}, data={"category": "lab_report"},
                           files={"file": ("a.png", png_bytes(b"l"), "image/png")}, follow_redirects=False)
    record_url = uploaded.headers["location"]
    page = client.get(record_url)
    assert 'class="status declined"' in page.text and f'action="{record_url}/extraction"' in page.text
    refused = client.post(record_url + "/extraction", data={"csrf": csrf})
    assert refused.status_code == 409  # no OCR consent yet: nothing is read
    client.post("/consents", data={"csrf": csrf, "item": "ocr", "give": "yes"})
    queued = client.post(record_url + "/extraction", data={"csrf": csrf}, follow_redirects=False)
    assert queued.status_code == 303
    after = client.get(record_url).text
    assert 'id="ocr-status"' in after and 'class="status declined"' not in after  # queued (or already read)


def test_form_fields_are_capped_and_passwords_kept_exactly(client, vault):
    page = client.get("/login")
    csrf = csrf_of(page.text)
    huge = client.post("/login", data={"csrf": csrf, "username": "c.huge", "password": "x" * 5000})
    assert huge.status_code == 422  # never hashed
    spaced = " " + PASSWORD + " "
    register(client, username="c.spaced", password=spaced)
    wrong = client.post("/login", data={"csrf": csrf, "username": "c.spaced", "password": PASSWORD})
    assert wrong.status_code == 401  # the password is not trimmed: what was typed is what is checked
    assert client.post("/login", data={"csrf": csrf, "username": "c.spaced", "password": spaced},
                       follow_redirects=False).status_code == 303


def test_patient_erases_the_account_from_the_console(client, vault):
    register(client, username="c.leaver", real_name="李离开")
    csrf = console_login(client, "c.leaver")
    account = client.get("/account")
    assert account.status_code == 200 and "李离开" in account.text
    assert_console_headers(account)
    unconfirmed = client.post("/account/erase", data={"csrf": csrf, "password": PASSWORD})
    assert unconfirmed.status_code == 422
    wrong = client.post("/account/erase", data={"csrf": csrf, "password": "not-the-password", "confirm": "yes"})
    assert wrong.status_code == 401
    erased = client.post("/account/erase", data={"csrf": csrf, "password": PASSWORD, "confirm": "yes"})
    assert erased.status_code == 200 and 'id="erased"' in erased.text
    assert client.get("/records", follow_redirects=False).status_code == 303  # the session ended with the account
    page = client.get("/login")
    assert client.post("/login", data={"csrf": csrf_of(page.text), "username": "c.leaver",
                                       "password": PASSWORD}).status_code == 401
