"""Sign-in hardening: lockout, TOTP for staff (required, replay refused), idle and absolute token lifetimes."""

from __future__ import annotations

from sqlalchemy import select

from audit.models import AuditEvent
from tests.helpers import PASSWORD, login, register, staff, totp_code


def _login(client, username, password=PASSWORD, otp=None):
    body = {"username": username, "password": password, **({"otp": otp} if otp else {})}
    return client.post("/v1/auth/login", json=body)


def test_lockout_after_five_failures_even_with_the_right_password(client, vault, clock):
    register(client, username="locky")
    for _ in range(5):
        assert _login(client, "locky", "Wr0ng-Passw0rd!").status_code == 401
    locked = _login(client, "locky")
    assert locked.status_code == 401 and "access_token" not in locked.text
    assert locked.json()["type"] == _login(client, "locky", "Wr0ng-Passw0rd!").json()["type"]
    clock.advance(minutes=15, seconds=1)
    assert _login(client, "locky").status_code == 200
    with vault.session() as session:
        assert session.scalars(select(AuditEvent).where(AuditEvent.action == "account_locked")).all()


def test_staff_need_totp_and_a_code_cannot_be_replayed(client, vault, clock):
    headers = staff(client, vault, "doctor", "dr-otp")
    secret = headers.pop("_secret")
    assert client.get("/v1/shared", headers=headers).status_code == 200
    missing = _login(client, "dr-otp")
    assert missing.status_code == 401 and missing.json()["type"].endswith(":otp-required")
    clock.advance(seconds=90)
    code = totp_code(secret, clock())
    assert _login(client, "dr-otp", otp=code).status_code == 200
    replay = _login(client, "dr-otp", otp=code)
    assert replay.status_code == 401 and replay.json()["type"].endswith(":invalid-credentials")
    assert _login(client, "dr-otp", otp="000000").status_code == 401


def test_staff_without_totp_cannot_sign_in_until_enrolled(client, vault):
    from vault.accounts import service as accounts
    from vault.identity import RequestContext

    with vault.session() as session:
        accounts.create(session, vault, username="new-auditor", password=PASSWORD, role="auditor",
                        ctx=RequestContext())
    response = _login(client, "new-auditor")
    assert response.status_code == 401 and response.json()["type"].endswith(":otp-enrollment-required")
    bad = client.post("/v1/auth/totp/enroll", json={"username": "new-auditor", "password": "Wr0ng-Passw0rd!"})
    assert bad.status_code == 401


def test_totp_secret_is_not_stored_in_plaintext(client, vault):
    headers = staff(client, vault, "escort", "escort-1")
    secret = headers.pop("_secret")
    from tests.helpers.scan import scan_tree

    vault.engine.dispose()
    assert scan_tree(vault.settings.data_dir, [secret]) == []


def test_idle_timeout_and_absolute_lifetime(client, vault, clock):
    register(client, username="sleepy")
    headers = login(client, "sleepy")
    for _ in range(4):  # active use keeps the token alive past the idle limit...
        clock.advance(minutes=10)
        assert client.get("/v1/records", headers=headers).status_code == 200
    clock.advance(minutes=15, seconds=1)  # ...but 15 idle minutes end it
    assert client.get("/v1/records", headers=headers).status_code == 401
    headers = login(client, "sleepy")
    steps = vault.settings.token_ttl_seconds // 600
    for _ in range(steps):
        clock.advance(minutes=10)
        client.get("/v1/records", headers=headers)
    clock.advance(minutes=10)
    assert client.get("/v1/records", headers=headers).status_code == 401  # absolute lifetime reached


def test_an_initial_password_must_be_changed_before_first_sign_in(client, vault, clock):
    from vault.accounts import service as accounts
    from vault.identity import RequestContext

    with vault.session() as session:
        accounts.create(session, vault, username="first-admin", password=PASSWORD, role="sysadmin",
                        ctx=RequestContext(), must_change_password=True)
    early = client.post("/v1/auth/totp/enroll", json={"username": "first-admin", "password": PASSWORD})
    assert early.status_code == 401 and early.json()["type"].endswith(":password-change-required")
    refused = _login(client, "first-admin")
    assert refused.status_code == 401  # neither signed in nor enrolled while the initial password stands
    same = client.post("/v1/auth/password", json={"username": "first-admin", "password": PASSWORD,
                                                  "new_password": PASSWORD})
    assert same.status_code == 422
    new = "An0ther-Passw0rd!"
    changed = client.post("/v1/auth/password", json={"username": "first-admin", "password": PASSWORD,
                                                     "new_password": new})
    assert changed.status_code == 204
    secret = client.post("/v1/auth/totp/enroll", json={"username": "first-admin", "password": new}).json()["secret"]
    assert client.post("/v1/auth/totp/activate", json={"username": "first-admin", "password": new,
                                                       "otp": totp_code(secret, clock())}).status_code == 204
    clock.advance(seconds=30)
    assert _login(client, "first-admin", password=new, otp=totp_code(secret, clock())).status_code == 200


def test_staff_passwords_expire_after_90_days_and_the_last_five_cannot_be_reused(client, vault, clock):
    headers = staff(client, vault, "auditor", "aging-auditor")
    secret = headers.pop("_secret")

    def code():
        clock.advance(seconds=30)
        return totp_code(secret, clock())

    clock.advance(days=91)
    expired = _login(client, "aging-auditor", otp=code())
    assert expired.status_code == 401 and expired.json()["type"].endswith(":password-change-required")
    current = PASSWORD
    passwords = [f"Rotat10n-{n}-Secret!" for n in range(5)]
    for new in passwords:
        changed = client.post("/v1/auth/password", json={"username": "aging-auditor", "password": current,
                                                         "new_password": new, "otp": code()})
        assert changed.status_code == 204, changed.text
        current = new
    for old in passwords:  # the current one and the four before it; the original is now 6 back
        reused = client.post("/v1/auth/password", json={"username": "aging-auditor", "password": current,
                                                        "new_password": old, "otp": code()})
        assert reused.status_code == 422 and reused.json()["reason"] == "reused", old
    assert _login(client, "aging-auditor", password=current, otp=code()).status_code == 200


def test_idle_staff_accounts_are_disabled_and_their_tokens_die(client, vault, clock):
    from vault.accounts import service as accounts
    from vault.identity import RequestContext

    object.__setattr__(vault.settings, "idle_timeout_seconds", 10**8)
    object.__setattr__(vault.settings, "token_ttl_seconds", 10**8)
    object.__setattr__(vault.settings, "staff_password_max_age_days", 10**4)
    headers = staff(client, vault, "escort", "idle-escort")
    headers.pop("_secret")
    active = staff(client, vault, "doctor", "busy-doctor")
    secret = active.pop("_secret")
    clock.advance(days=60)
    assert _login(client, "busy-doctor", otp=totp_code(secret, clock())).status_code == 200
    clock.advance(days=31)
    with vault.session() as session:
        assert accounts.disable_idle_staff(session, vault, ctx=RequestContext()) == ["idle-escort"]
    assert client.get("/v1/shared", headers=headers).status_code == 401
    assert client.get("/v1/shared", headers=active).status_code == 200


def test_a_patient_who_enrolled_totp_must_give_a_code(client, vault, clock):
    register(client, username="otp-patient")
    enrolled = client.post("/v1/auth/totp/enroll", json={"username": "otp-patient", "password": PASSWORD})
    assert enrolled.status_code == 200, enrolled.text
    secret = enrolled.json()["secret"]
    assert client.post("/v1/auth/totp/activate", json={"username": "otp-patient", "password": PASSWORD,
                                                        "otp": totp_code(secret, clock())}).status_code == 204
    missing = _login(client, "otp-patient")
    assert missing.status_code == 401 and missing.json()["type"].endswith(":otp-required")
    clock.advance(seconds=60)
    assert _login(client, "otp-patient", otp=totp_code(secret, clock())).status_code == 200
