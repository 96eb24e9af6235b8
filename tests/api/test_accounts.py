"""Account administration over HTTP (AC-3, AC-4): what each admin role may do, what it never sees, what is audited."""

from __future__ import annotations

from sqlalchemy import select

from audit.models import AuditEvent
from tests.helpers import PASSWORD, login, register, staff, totp_code
from vault.accounts import service as accounts
from vault.db.models import Account
from vault.identity import RequestContext

NEW_PASSWORD = "N3w-Str0ng-Passw0rd!"


def _admin(client, vault, role: str, username: str) -> dict:
    headers = staff(client, vault, role, username)
    headers.pop("_secret")
    return headers


def _account(client, headers, username: str) -> dict:
    response = client.get("/v1/accounts", headers=headers, params={"limit": 500})
    assert response.status_code == 200, response.text
    return next(a for a in response.json()["items"] if a["username"] == username)


def _account_id(vault, username: str) -> str:
    """Any account's id, read from the database (the sysadmin's list shows only the staff it manages)."""
    with vault.session() as session:
        return session.scalar(select(Account.id).where(Account.username == username))


def _doctor_account(vault, username: str) -> None:
    with vault.session() as session:
        accounts.create(session, vault, username=username, password=PASSWORD, role="doctor",
                        ctx=RequestContext(request_id="test"))


def _events(vault, action: str) -> list[AuditEvent]:
    with vault.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def test_list_shows_the_managed_staff_only_without_secrets_or_phi(client, vault):
    sysadmin = _admin(client, vault, "sysadmin", "acc-sys")
    _admin(client, vault, "secadmin", "acc-sec")
    patient = register(client, username="acc-patient", real_name="李四", phone="13812345678")
    _admin(client, vault, "doctor", "acc-doc")
    response = client.get("/v1/accounts", headers=sysadmin)
    assert response.status_code == 200
    items = {a["username"]: a for a in response.json()["items"]}
    assert "acc-doc" in items and items["acc-doc"]["totp_enabled"] is True
    # 三权分立: no patient account, no administrator (not even the caller) in the sysadmin's list
    assert not {"acc-patient", "acc-sys", "acc-sec"} & set(items)
    assert {a["role"] for a in items.values()} <= {"doctor", "escort", "auditor"}
    assert set(items["acc-doc"]) == {"id", "username", "role", "active", "totp_enabled", "locked",
                                     "must_change_password", "created_at", "last_login_at"}
    assert items["acc-doc"]["last_login_at"] is not None
    text = response.text
    for secret in ("argon2", "$", "password_hash", "totp_secret", patient["patient_id"], patient["id_number"],
                   "13812345678", "李四"):
        assert secret not in text
    assert _events(vault, "account.list")[-1].outcome == "allow"


def test_list_pages_by_username(client, vault):
    sysadmin = _admin(client, vault, "sysadmin", "page-sys")
    for n in range(3):
        _doctor_account(vault, f"page-d{n}")
    seen, after = [], None
    while True:
        page = client.get("/v1/accounts", headers=sysadmin, params={"limit": 2, **({"after": after} if after else {})})
        assert page.status_code == 200 and len(page.json()["items"]) <= 2
        seen += [a["username"] for a in page.json()["items"]]
        after = page.json()["next_cursor"]
        if after is None:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen)) and {"page-d0", "page-d1", "page-d2"} <= set(seen)


def test_created_account_must_change_its_password_at_first_sign_in(client, vault, clock):
    sysadmin = _admin(client, vault, "sysadmin", "mk-sys")
    created = client.post("/v1/accounts", headers=sysadmin,
                          json={"username": "dr.new", "password": PASSWORD, "role": "doctor"})
    assert created.status_code == 201, created.text
    assert created.json()["role"] == "doctor" and created.json()["must_change_password"] is True
    assert "password" not in created.text.replace("must_change_password", "")
    again = client.post("/v1/accounts", headers=sysadmin,
                        json={"username": "DR.NEW", "password": PASSWORD, "role": "doctor"})
    assert again.status_code == 409 and again.headers["content-type"].startswith("application/problem+json")
    weak = client.post("/v1/accounts", headers=sysadmin,
                       json={"username": "dr.weak", "password": "x", "role": "doctor"})
    assert weak.status_code == 422 and weak.json()["type"].endswith(":weak-password")
    extra = client.post("/v1/accounts", headers=sysadmin,
                        json={"username": "dr.x", "password": PASSWORD, "role": "doctor", "is_admin": True})
    assert extra.status_code == 422

    # 三权分立: the sysadmin who set the initial password cannot also enrol the second factor with it
    early = client.post("/v1/auth/totp/enroll", json={"username": "dr.new", "password": PASSWORD})
    assert early.status_code == 401 and early.json()["type"].endswith(":password-change-required")
    refused = client.post("/v1/auth/login", json={"username": "dr.new", "password": PASSWORD})
    assert refused.status_code == 401  # no sign-in before enrolment either
    changed = client.post("/v1/auth/password", json={"username": "dr.new", "password": PASSWORD,
                                                     "new_password": NEW_PASSWORD})
    assert changed.status_code == 204, changed.text
    assert client.post("/v1/auth/totp/enroll", json={"username": "dr.new", "password": PASSWORD}).status_code == 401
    secret = client.post("/v1/auth/totp/enroll", json={"username": "dr.new",
                                                       "password": NEW_PASSWORD}).json()["secret"]
    assert client.post("/v1/auth/totp/activate", json={"username": "dr.new", "password": NEW_PASSWORD,
                                                       "otp": totp_code(secret, clock())}).status_code == 204
    clock.advance(seconds=30)
    signed_in = client.post("/v1/auth/login", json={"username": "dr.new", "password": NEW_PASSWORD,
                                                    "otp": totp_code(secret, clock())})
    assert signed_in.status_code == 200
    refusals = [e.reason for e in _events(vault, "login_failed") if e.resource_id == created.json()["id"]]
    assert "initial-password" in refusals
    create = [e for e in _events(vault, "account.create") if e.resource_id == created.json()["id"]]
    assert [(e.outcome, e.reason, e.actor_role) for e in create] == [("allow", "doctor", "sysadmin")]


def test_admin_roles_and_patients_cannot_be_created_over_the_api(client, vault):
    sysadmin = _admin(client, vault, "sysadmin", "adm-sys")
    for role in ("sysadmin", "secadmin", "auditadmin"):
        refused = client.post("/v1/accounts", headers=sysadmin,
                              json={"username": f"new-{role}", "password": PASSWORD, "role": role})
        assert refused.status_code == 403 and refused.json()["type"].endswith(":forbidden"), refused.text
    for role in ("patient", "superuser"):
        refused = client.post("/v1/accounts", headers=sysadmin,
                              json={"username": f"new-{role}", "password": PASSWORD, "role": role})
        assert refused.status_code == 422
    names = {a["username"] for a in client.get("/v1/accounts", headers=sysadmin, params={"limit": 500}).json()["items"]}
    assert not {n for n in names if n.startswith("new-")}
    denials = [e for e in _events(vault, "account.create") if e.outcome == "deny"]
    assert [e.reason for e in denials] == ["admin-role"] * 3


def test_disable_kills_live_tokens_at_once_and_enable_lets_the_user_back(client, vault, clock):
    sysadmin = _admin(client, vault, "sysadmin", "dis-sys")
    doctor = staff(client, vault, "doctor", "dis-doc")
    secret = doctor.pop("_secret")
    clock.advance(seconds=60)
    second = {"Authorization": "Bearer " + client.post("/v1/auth/login", json={
        "username": "dis-doc", "password": PASSWORD, "otp": totp_code(secret, clock())}).json()["access_token"]}
    assert client.get("/v1/shared", headers=doctor).status_code == 200
    account_id = _account(client, sysadmin, "dis-doc")["id"]

    disabled = client.patch(f"/v1/accounts/{account_id}", headers=sysadmin, json={"active": False})
    assert disabled.status_code == 200 and disabled.json()["active"] is False
    for headers in (doctor, second):
        assert client.get("/v1/shared", headers=headers).status_code == 401
    clock.advance(seconds=60)
    assert client.post("/v1/auth/login", json={"username": "dis-doc", "password": PASSWORD,
                                               "otp": totp_code(secret, clock())}).status_code == 401

    enabled = client.patch(f"/v1/accounts/{account_id}", headers=sysadmin, json={"active": True})
    assert enabled.status_code == 200 and enabled.json()["active"] is True
    assert client.get("/v1/shared", headers=doctor).status_code == 401  # revoked tokens stay revoked
    clock.advance(seconds=60)
    again = client.post("/v1/auth/login", json={"username": "dis-doc", "password": PASSWORD,
                                                "otp": totp_code(secret, clock())})
    assert again.status_code == 200
    reasons = [e.reason for e in _events(vault, "account.update") if e.resource_id == account_id]
    assert reasons == ["disabled", "enabled"]

    assert client.patch("/v1/accounts/no-such-id", headers=sysadmin, json={"active": False}).status_code == 404
    assert client.patch(f"/v1/accounts/{account_id}", headers=sysadmin, json={"active": "no"}).status_code == 422


def test_the_sysadmin_cannot_reach_patients_or_administrators(client, vault):
    """三权分立: disable and unlock find only doctor, escort and auditor accounts; a patient's, another admin's or the
    caller's own account answers like an unknown id (404), each attempt audited as a denial."""
    sysadmin = _admin(client, vault, "sysadmin", "sep-sys")
    for role in ("sysadmin", "secadmin", "auditadmin"):
        _admin(client, vault, role, f"sep-{role}-2")
    patient = register(client, username="sep-patient")
    targets = [_account_id(vault, name) for name in ("sep-sysadmin-2", "sep-secadmin-2", "sep-auditadmin-2",
                                                      "sep-patient", "sep-sys")]
    for account_id in targets:
        assert client.patch(f"/v1/accounts/{account_id}", headers=sysadmin, json={"active": False}).status_code == 404
        assert client.post(f"/v1/accounts/{account_id}/unlock", headers=sysadmin).status_code == 404
    assert client.get("/v1/patients/me", headers=login(client, "sep-patient")).status_code == 200
    assert patient["patient_id"] not in client.get("/v1/accounts", headers=sysadmin).text
    denied = [e.reason for e in _events(vault, "account.update") if e.outcome == "deny"]
    assert denied == ["not-managed"] * (2 * len(targets))


def test_unlock_clears_a_lockout(client, vault):
    sysadmin = _admin(client, vault, "sysadmin", "unl-sys")
    _doctor_account(vault, "unl-doc")
    for _ in range(5):
        client.post("/v1/auth/login", json={"username": "unl-doc", "password": "Wr0ng-Passw0rd!"})
    locked = client.post("/v1/auth/totp/enroll", json={"username": "unl-doc", "password": PASSWORD})
    assert locked.status_code == 401  # the right password is refused while locked
    account = _account(client, sysadmin, "unl-doc")
    assert account["locked"] is True
    unlocked = client.post(f"/v1/accounts/{account['id']}/unlock", headers=sysadmin)
    assert unlocked.status_code == 200 and unlocked.json()["locked"] is False
    assert client.post("/v1/auth/totp/enroll", json={"username": "unl-doc", "password": PASSWORD}).status_code == 200
    assert [e.reason for e in _events(vault, "account.update") if e.resource_id == account["id"]] == ["unlocked"]


def test_role_change_is_audited_old_to_new_and_ends_the_old_session(client, vault, clock):
    sysadmin = _admin(client, vault, "sysadmin", "rc-sys")
    secadmin = _admin(client, vault, "secadmin", "rc-sec")
    doctor = staff(client, vault, "doctor", "rc-doc")
    secret = doctor.pop("_secret")
    assert client.get("/v1/shared", headers=doctor).status_code == 200
    account_id = _account(client, sysadmin, "rc-doc")["id"]

    changed = client.put(f"/v1/accounts/{account_id}/role", headers=secadmin, json={"role": "escort"})
    assert changed.status_code == 200 and changed.json()["role"] == "escort"
    assert client.get("/v1/shared", headers=doctor).status_code == 401  # no session continues under a new role
    clock.advance(seconds=60)
    escort = client.post("/v1/auth/login", json={"username": "rc-doc", "password": PASSWORD,
                                                 "otp": totp_code(secret, clock())})
    assert escort.status_code == 200
    escort_headers = {"Authorization": f"Bearer {escort.json()['access_token']}"}
    patient_id = register(client, username="rc-patient")["patient_id"]
    assert client.get("/v1/shared", headers=escort_headers).status_code == 200
    assert client.post("/v1/breakglass", headers=escort_headers,  # the new role's policy applies, not the old one's
                       json={"patient_id": patient_id, "reason": "escort cannot break glass"}).status_code == 404
    events = [e for e in _events(vault, "account.role") if e.resource_id == account_id]
    assert [(e.outcome, e.reason, e.actor_role) for e in events] == [("allow", "doctor->escort", "secadmin")]


def test_role_changes_never_touch_admin_roles_or_patients(client, vault):
    _admin(client, vault, "sysadmin", "rn-sys")
    secadmin = _admin(client, vault, "secadmin", "rn-sec")
    _admin(client, vault, "auditor", "rn-aud")
    register(client, username="rn-patient")
    ids = {name: _account_id(vault, name) for name in ("rn-sys", "rn-aud", "rn-patient", "rn-sec")}
    refused = [
        (ids["rn-aud"], "sysadmin"), (ids["rn-aud"], "secadmin"), (ids["rn-aud"], "patient"),
        (ids["rn-sys"], "doctor"), (ids["rn-sec"], "auditor"), (ids["rn-patient"], "doctor"),
    ]
    for account_id, role in refused:
        response = client.put(f"/v1/accounts/{account_id}/role", headers=secadmin, json={"role": role})
        assert response.status_code == 403, (role, response.text)
    assert client.put(f"/v1/accounts/{ids['rn-aud']}/role", headers=secadmin, json={"role": "root"}).status_code == 422
    assert client.put("/v1/accounts/nope/role", headers=secadmin, json={"role": "doctor"}).status_code == 404
    with vault.session() as session:
        roles = dict(session.execute(select(Account.username, Account.role)).all())
    assert (roles["rn-sys"], roles["rn-sec"], roles["rn-aud"], roles["rn-patient"]) == (
        "sysadmin", "secadmin", "auditor", "patient")
    denials = [e.reason for e in _events(vault, "account.role") if e.outcome == "deny"]
    assert denials == ["auditor->sysadmin", "auditor->secadmin", "auditor->patient", "sysadmin->doctor",
                       "secadmin->auditor", "patient->doctor", "not-found"]


def test_separation_of_duties(client, vault):
    sysadmin = _admin(client, vault, "sysadmin", "sd-sys")
    secadmin = _admin(client, vault, "secadmin", "sd-sec")
    auditadmin = _admin(client, vault, "auditadmin", "sd-auditadmin")
    auditor = _admin(client, vault, "auditor", "sd-auditor")
    target = _account(client, sysadmin, "sd-auditor")["id"]
    body = {"username": "sd-new", "password": PASSWORD, "role": "doctor"}
    for headers in (secadmin, auditadmin, auditor):  # only sysadmin creates, lists, disables, unlocks
        assert client.post("/v1/accounts", headers=headers, json=body).status_code == 403
        assert client.get("/v1/accounts", headers=headers).status_code == 403
        assert client.patch(f"/v1/accounts/{target}", headers=headers, json={"active": False}).status_code == 403
        assert client.post(f"/v1/accounts/{target}/unlock", headers=headers).status_code == 403
    for headers in (sysadmin, auditadmin, auditor):  # only secadmin changes roles
        assert client.put(f"/v1/accounts/{target}/role", headers=headers, json={"role": "doctor"}).status_code == 403
    assert client.get("/v1/audit/events", headers=sysadmin).status_code == 403  # nor does sysadmin read the audit
    assert _account(client, sysadmin, "sd-auditor")["role"] == "auditor"
    assert _account(client, sysadmin, "sd-auditor")["active"] is True
    assert "sd-new" not in {a["username"] for a in client.get("/v1/accounts", headers=sysadmin).json()["items"]}
    with vault.session() as session:
        denied = session.scalars(select(AuditEvent).where(
            AuditEvent.outcome == "deny", AuditEvent.action.in_(("account.create", "account.role")))).all()
    assert len(denied) == 3 + 3


def test_policy_is_readable_by_secadmin_and_auditors_only(client, vault):
    secadmin = _admin(client, vault, "secadmin", "pol-sec")
    auditor = _admin(client, vault, "auditor", "pol-aud")
    sysadmin = _admin(client, vault, "sysadmin", "pol-sys")
    response = client.get("/v1/policy", headers=secadmin)
    assert response.status_code == 200
    rules = {(r["role"], r["action"]) for r in response.json()["items"]}
    assert {("sysadmin", "account.create"), ("secadmin", "account.role"), ("auditor", "audit.read")} <= rules
    assert not {r for r in rules if r[0] == "auditadmin" and not r[1].endswith((".read", ".export", ".status"))}
    assert client.get("/v1/policy", headers=auditor).json() == response.json()
    assert client.get("/v1/policy", headers=sysadmin).status_code == 403
    register(client, username="pol-patient")
    assert client.get("/v1/policy", headers=login(client, "pol-patient")).status_code == 403
    assert client.get("/v1/policy").status_code == 401


def test_account_admin_only_from_admin_networks(vault, app):
    from fastapi.testclient import TestClient

    object.__setattr__(vault.settings, "admin_networks", "10.20.0.0/16")
    with TestClient(app, client=("10.20.3.4", 5000)) as inside, TestClient(app, client=("192.168.9.9", 5000)) as out:
        sysadmin = _admin(inside, vault, "sysadmin", "net-sys")
        secadmin = _admin(inside, vault, "secadmin", "net-sec")
        assert inside.get("/v1/accounts", headers=sysadmin).status_code == 200
        assert out.get("/v1/accounts", headers=sysadmin).status_code == 403
        assert out.get("/v1/policy", headers=secadmin).status_code == 403
        assert inside.get("/v1/policy", headers=secadmin).status_code == 200
