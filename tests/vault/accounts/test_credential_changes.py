"""Sessions end when credentials change (issue 14 item 4): a password change ends every live session of the account,
turning TOTP on ends the sessions from before it, and a patient who enrolled TOTP proves it to change the password."""

from __future__ import annotations

from tests.helpers import PASSWORD, login, register, totp_code

NEW_PASSWORD = "An0ther-Str0ng-Passw0rd!"


def _alive(client, headers) -> bool:
    status = client.get("/v1/patients/me", headers=headers).status_code
    assert status in (200, 401)
    return status == 200


def test_a_password_change_ends_every_live_session(client):
    register(client, username="cc-pw")
    phone, desktop = login(client, "cc-pw"), login(client, "cc-pw")
    assert _alive(client, phone) and _alive(client, desktop)
    changed = client.post("/v1/auth/password", json={"username": "cc-pw", "password": PASSWORD,
                                                     "new_password": NEW_PASSWORD})
    assert changed.status_code == 204, changed.text
    assert not _alive(client, phone) and not _alive(client, desktop)
    assert _alive(client, login(client, "cc-pw", NEW_PASSWORD))


def test_turning_two_factor_on_ends_the_sessions_from_before(client, clock):
    register(client, username="cc-totp")
    before = login(client, "cc-totp")
    secret = client.post("/v1/auth/totp/enroll", json={"username": "cc-totp", "password": PASSWORD}).json()["secret"]
    assert _alive(client, before)  # enrolment alone changes nothing yet
    activated = client.post("/v1/auth/totp/activate", json={"username": "cc-totp", "password": PASSWORD,
                                                            "otp": totp_code(secret, clock())})
    assert activated.status_code == 204
    assert not _alive(client, before)


def test_a_patient_with_two_factor_gives_a_code_to_change_the_password(client, clock):
    register(client, username="cc-otp")
    secret = client.post("/v1/auth/totp/enroll", json={"username": "cc-otp", "password": PASSWORD}).json()["secret"]
    assert client.post("/v1/auth/totp/activate", json={"username": "cc-otp", "password": PASSWORD,
                                                       "otp": totp_code(secret, clock())}).status_code == 204
    clock.advance(seconds=30)
    without = client.post("/v1/auth/password", json={"username": "cc-otp", "password": PASSWORD,
                                                     "new_password": NEW_PASSWORD})
    assert without.status_code == 401
    clock.advance(seconds=30)
    wrong = client.post("/v1/auth/password", json={"username": "cc-otp", "password": PASSWORD,
                                                   "new_password": NEW_PASSWORD, "otp": "000000"})
    assert wrong.status_code == 401
    clock.advance(seconds=30)
    right = client.post("/v1/auth/password", json={"username": "cc-otp", "password": PASSWORD,
                                                   "new_password": NEW_PASSWORD, "otp": totp_code(secret, clock())})
    assert right.status_code == 204, right.text
