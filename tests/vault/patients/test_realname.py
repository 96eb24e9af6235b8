"""Real-name verification at registration (issue 14 item 3, 实名认证): with a provider configured, registration needs a
challenge answered with the right code for the phone being registered, before anything about the ID number is
answered; codes never reach the audit trail or the logs. The provider is tests/helpers/realname.py, a real one."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from sqlalchemy import select

from audit.models import AuditEvent
from tests.conftest import make_settings
from tests.helpers import PASSWORD, consents, make_id_number, make_phone, register
from tests.helpers.scan import find_in_bytes, scan_tree
from vault.patients import realname
from vault.settings import Settings

PROVIDER = "tests.helpers.realname:factory"


@pytest.fixture
def settings(tmp_path, backend, request) -> Settings:
    return make_settings(tmp_path, backend, request, realname_provider=PROVIDER)


def _body(client, **overrides) -> dict:
    return {"username": f"rn-{make_phone()[-6:]}", "password": PASSWORD, "real_name": "张三",
            "id_number": make_id_number(), "phone": make_phone(), "consents": consents(client), **overrides}


def _challenge(client, vault, phone: str) -> tuple[str, str]:
    started = client.post("/v1/patients/register/challenge", json={"phone": phone})
    assert started.status_code == 202, started.text
    return started.json()["challenge_id"], vault.realname.code_for(phone)


def _denials(vault) -> list[str | None]:
    with vault.session() as session:
        return list(session.scalars(select(AuditEvent.reason).where(AuditEvent.action == "patient.register",
                                                                    AuditEvent.outcome == "deny")
                                    .order_by(AuditEvent.id)))


def _refused(response, reason: str) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["type"].endswith(":realname-unverified") and body["reason"] == reason


def test_registration_needs_the_right_code_for_this_phone(client, vault):
    body = _body(client)
    _refused(client.post("/v1/patients/register", json=body), "realname-missing")
    challenge, code = _challenge(client, vault, body["phone"])
    wrong = f"{(int(code) + 1) % 10**8:08d}"
    _refused(client.post("/v1/patients/register", json={**body, "realname_challenge": challenge,
                                                         "realname_code": wrong}), "realname-unverified")
    done = client.post("/v1/patients/register", json={**body, "realname_challenge": challenge, "realname_code": code})
    assert done.status_code == 201, done.text
    # A spent challenge proves nothing again.
    again = _body(client, phone=body["phone"])
    _refused(client.post("/v1/patients/register", json={**again, "realname_challenge": challenge,
                                                        "realname_code": code}), "realname-unverified")
    assert _denials(vault) == ["realname-missing", "realname-unverified", "realname-unverified"]


def test_a_code_for_another_phone_does_not_verify_this_one(client, vault):
    mine, theirs = make_phone(), make_phone()
    challenge, code = _challenge(client, vault, theirs)
    response = client.post("/v1/patients/register", json=_body(client, phone=mine, realname_challenge=challenge,
                                                               realname_code=code))
    _refused(response, "realname-unverified")


def test_the_taken_id_number_is_answered_only_after_proof(client, vault):
    first = register_verified(client, vault)
    probe = _body(client, id_number=first["id_number"])
    _refused(client.post("/v1/patients/register", json=probe), "realname-missing")  # not 409: no proof yet
    challenge, code = _challenge(client, vault, probe["phone"])
    collided = client.post("/v1/patients/register", json={**probe, "realname_challenge": challenge,
                                                          "realname_code": code})
    assert collided.status_code == 409
    assert _denials(vault) == ["realname-missing", "id-number-registered"]


def register_verified(client, vault) -> dict:
    body = _body(client)
    challenge, code = _challenge(client, vault, body["phone"])
    done = client.post("/v1/patients/register", json={**body, "realname_challenge": challenge, "realname_code": code})
    assert done.status_code == 201, done.text
    return body


def test_codes_and_phones_never_reach_the_trail_or_the_logs(client, vault, caplog):
    caplog.set_level(logging.DEBUG)
    body = register_verified(client, vault)
    wrong_body = _body(client)
    challenge, code = _challenge(client, vault, wrong_body["phone"])
    client.post("/v1/patients/register", json={**wrong_body, "realname_challenge": challenge,
                                               "realname_code": code[::-1]})
    secrets = [c for _phone, c in vault.realname.sent] + [body["phone"], wrong_body["phone"]]
    assert len(secrets) == 4
    with vault.session() as session:
        trail = repr([vars(e) for e in session.scalars(select(AuditEvent))]).encode()
    assert find_in_bytes(trail, secrets) == []
    assert find_in_bytes(caplog.text.encode(), secrets) == []
    assert scan_tree(vault.settings.data_dir, [c for _phone, c in vault.realname.sent]) == []  # anywhere at rest


def test_challenges_are_rate_limited_per_phone(client, vault):
    object.__setattr__(vault.settings, "rate_limit_per_target", 2)
    phone = make_phone()
    answers = [client.post("/v1/patients/register/challenge", json={"phone": phone}).status_code for _ in range(3)]
    assert answers == [202, 202, 429]
    assert client.post("/v1/patients/register/challenge", json={"phone": make_phone()}).status_code == 202
    assert len(vault.realname.sent) == 3  # the refused one sent nothing


def test_code_guesses_per_phone_are_limited(client, vault):
    object.__setattr__(vault.settings, "rate_limit_per_target", 3)
    body = _body(client)
    challenge, code = _challenge(client, vault, body["phone"])
    for guess in ("00000000", "11111111", "22222222"):
        if guess != code:
            client.post("/v1/patients/register", json={**body, "id_number": make_id_number(),
                                                       "realname_challenge": challenge, "realname_code": guess})
    limited = client.post("/v1/patients/register", json={**body, "realname_challenge": challenge,
                                                          "realname_code": code})
    assert limited.status_code == 429 and limited.json()["type"].endswith(":rate-limited")


@dataclasses.dataclass
class _Away:
    """A provider whose service cannot be reached."""

    def start(self, *, phone, now):
        raise ConnectionError(f"no route to SMS gateway for {phone}")

    def check(self, challenge_id, code, *, now):
        raise ConnectionError(f"timeout checking {code}")


def test_a_provider_that_cannot_answer_registers_nobody(client, vault, caplog):
    caplog.set_level(logging.DEBUG)
    vault.realname = _Away()
    body = _body(client, realname_challenge="abc", realname_code="12345678")
    unavailable = client.post("/v1/patients/register", json=body)
    assert unavailable.status_code == 503 and unavailable.json()["type"].endswith(":realname-unavailable")
    assert client.post("/v1/patients/register/challenge", json={"phone": body["phone"]}).status_code == 503
    assert body["phone"] not in caplog.text and "12345678" not in caplog.text
    assert client.post("/v1/auth/login", json={"username": body["username"], "password": PASSWORD}).status_code == 401


def test_loading_the_provider_setting(tmp_path):
    assert realname.load(Settings.load(tmp_path)) is None  # off by default
    loaded = realname.load(Settings.load(tmp_path, realname_provider=PROVIDER))
    assert isinstance(loaded, realname.RealNameProvider)
    with pytest.raises(ValueError, match="cannot import"):
        realname.load(Settings.load(tmp_path, realname_provider="tests.helpers.realname:nothing"))
    with pytest.raises(ValueError, match="did not make a provider"):
        realname.load(Settings.load(tmp_path, realname_provider="builtins:repr"))
    with pytest.raises(ValueError, match=r"package\.module:factory"):
        Settings.load(tmp_path, realname_provider="sms vendor")


def test_without_a_provider_there_is_no_challenge_and_registration_is_as_before(tmp_path, request, monkeypatch):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.conftest import CHEAP_KDF, PASSPHRASE, FakeClock
    from vault.runtime import init_data_dir, open_vault

    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    plain = make_settings(tmp_path / "off", "sqlite")
    init_data_dir(plain, PASSPHRASE, kdf_params=CHEAP_KDF)
    off = open_vault(plain, PASSPHRASE, clock=FakeClock())
    try:
        with TestClient(create_app(off), raise_server_exceptions=False) as other:
            missing = other.post("/v1/patients/register/challenge", json={"phone": make_phone()})
            assert missing.status_code == 404 and missing.json()["type"].endswith(":not-found")
            register(other, username="rn-off")
    finally:
        off.close()


def test_the_console_registers_in_two_steps(client, vault):
    import re

    csrf = re.compile(r'name="csrf" value="([0-9a-f]{64})"')
    page = client.get("/register")
    assert page.status_code == 200 and 'action="/register/code"' in page.text
    phone = make_phone()
    sent = client.post("/register/code", data={"csrf": csrf.search(page.text).group(1), "phone": phone})
    assert sent.status_code == 200 and 'id="code-sent"' in sent.text
    challenge = re.search(r'name="realname_challenge" value="([^"]+)"', sent.text).group(1)
    form = {"csrf": csrf.search(sent.text).group(1), "notice_version": consents(client)["notice_version"],
            "username": "rn.console", "password": PASSWORD, "real_name": "王芳", "id_number": make_id_number(),
            "phone": phone, "health_data": "yes", "id_number_consent": "yes", "realname_challenge": challenge}
    wrong = client.post("/register", data={**form, "realname_code": "99999999"}, follow_redirects=False)
    assert wrong.status_code == 403 and "99999999" not in wrong.text
    done = client.post("/register", data={**form, "realname_code": vault.realname.code_for(phone)},
                       follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/login?done=registered"
