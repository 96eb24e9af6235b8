"""Registration and sign-in are not oracles (issue 14 item 3): per-client and per-target rate limits (429 with
Retry-After, shared through the database), and a registration that collides with a registered ID number audited
against that patient's pseudonym and counted toward the denial-burst alert."""

from __future__ import annotations

from sqlalchemy import select

from audit.models import AuditEvent
from tests.helpers import PASSWORD, consents, make_id_number, make_phone, register
from vault.db.models import RateLimit


def _limits(vault, **values) -> None:
    for name, value in values.items():
        object.__setattr__(vault.settings, name, value)


def test_sign_in_attempts_per_account_are_limited_and_the_window_ends(client, vault, clock):
    _limits(vault, rate_limit_per_target=3, rate_limit_window_seconds=600)
    register(client, username="rl-target")
    answers = [client.post("/v1/auth/login", json={"username": "rl-target", "password": PASSWORD}).status_code
               for _ in range(3)]
    assert answers == [200, 200, 200]
    limited = client.post("/v1/auth/login", json={"username": "RL-Target ", "password": PASSWORD})
    assert limited.status_code == 429 and limited.json()["type"].endswith(":rate-limited")
    assert 0 < int(limited.headers["retry-after"]) <= 600
    # another account from the same client is not held up by this one's limit
    register(client, username="rl-other")
    assert client.post("/v1/auth/login", json={"username": "rl-other", "password": PASSWORD}).status_code == 200
    clock.advance(seconds=601)
    assert client.post("/v1/auth/login", json={"username": "rl-target", "password": PASSWORD}).status_code == 200


def test_one_client_is_limited_across_accounts_and_doors(client, vault):
    _limits(vault, rate_limit_per_client=4, rate_limit_per_target=100)
    register(client, username="rl-c1")
    statuses = [client.post("/v1/auth/login", json={"username": f"rl-x{i}", "password": PASSWORD}).status_code
                for i in range(3)]
    assert statuses == [401, 401, 401]
    totp = client.post("/v1/auth/totp/enroll", json={"username": "rl-c1", "password": PASSWORD})
    assert totp.status_code == 429  # the fifth attempt of this client (registration counted as the first)
    password = client.post("/v1/auth/password", json={"username": "rl-c1", "password": PASSWORD,
                                                      "new_password": "Diff3rent-Passw0rd!"})
    assert password.status_code == 429


def test_buckets_hold_no_address_or_username(client, vault):
    register(client, username="rl-private")
    client.post("/v1/auth/login", json={"username": "rl-private", "password": PASSWORD})
    with vault.session() as session:
        buckets = list(session.scalars(select(RateLimit.bucket)))
    assert buckets and not any("rl-private" in b or "testclient" in b for b in buckets)
    assert all(len(b) == 32 and int(b, 16) >= 0 for b in buckets)


def test_a_registration_on_a_registered_id_number_is_audited_and_feeds_the_burst_alert(client, vault):
    _limits(vault, alert_denials_per_minute=3, rate_limit_per_target=100)
    first = register(client, username="rl-holder")
    body = {**{k: first[k] for k in ("password", "real_name", "consents")}, "id_number": first["id_number"]}
    for i in range(3):
        again = client.post("/v1/patients/register", json={**body, "username": f"rl-probe{i}", "phone": make_phone()})
        assert again.status_code == 409
    with vault.session() as session:
        denied = list(session.scalars(select(AuditEvent).where(AuditEvent.action == "patient.register",
                                                               AuditEvent.outcome == "deny")))
        alerts = list(session.scalars(select(AuditEvent).where(AuditEvent.action == "alert.raised",
                                                               AuditEvent.reason == "denial-burst")))
    assert [e.reason for e in denied] == ["id-number-registered"] * 3
    assert {e.patient_pseudonym for e in denied} != {None}
    assert first["patient_id"] not in repr([vars(e) for e in denied])
    assert len(alerts) == 1


def test_registrations_for_one_id_number_are_limited(client, vault):
    _limits(vault, rate_limit_per_target=2, rate_limit_per_client=100)
    id_number = make_id_number()
    register(client, username="rl-id0", id_number=id_number)
    body = {"password": PASSWORD, "real_name": "张三", "id_number": id_number, "phone": make_phone()}
    body["consents"] = consents(client)
    assert client.post("/v1/patients/register", json={**body, "username": "rl-id1"}).status_code == 409
    assert client.post("/v1/patients/register", json={**body, "username": "rl-id2"}).status_code == 429
