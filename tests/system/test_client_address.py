"""The client address the rate limits, the audit trail and the admin-network check see is the TCP peer unless a
reverse proxy is named (`HEALTHVAULT_TRUSTED_PROXIES`): uvicorn's own default believes X-Forwarded-For from
127.0.0.1, which would let any local process pick its address (vault/cli/serve.py `proxy_options`)."""

from __future__ import annotations

import os
import sqlite3

import httpx
import pytest

from tests.conftest import CHEAP_KDF, PASSPHRASE, unique
from tests.helpers.server import Server, cli_env
from vault.runtime import init_data_dir
from vault.settings import Settings

pytestmark = pytest.mark.timeout(180)
CLAIMED = "203.0.113.9"  # TEST-NET-3: an address the client only claims


def _failed_login_addresses(tmp_path, monkeypatch, extra_env: dict[str, str]) -> list[str]:
    for name in [k for k in os.environ if k.startswith("HEALTHVAULT_")]:
        monkeypatch.delenv(name)
    settings = Settings.load(tmp_path / "var")
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    server = Server({**cli_env(settings.data_dir, PASSPHRASE.decode()), **extra_env}, tmp_path / "serve.log")
    try:
        server.wait_ready()
        answer = httpx.post(server.base + "/v1/auth/login", headers={"X-Forwarded-For": CLAIMED},
                            json={"username": unique("nobody"), "password": "not-the-password-1A!"}, timeout=30)
        assert answer.status_code == 401, answer.text
    finally:
        server.stop()
    with sqlite3.connect(settings.data_dir / "vault.db") as db:
        return [row[0] for row in db.execute("SELECT client_addr FROM audit_events WHERE action = 'login_failed'")]


def test_a_forwarded_for_header_is_not_believed_by_default(tmp_path, monkeypatch):
    assert _failed_login_addresses(tmp_path, monkeypatch, {}) == ["127.0.0.1"]


def test_a_named_proxy_is_believed(tmp_path, monkeypatch):
    assert _failed_login_addresses(tmp_path, monkeypatch, {"HEALTHVAULT_TRUSTED_PROXIES": "127.0.0.1"}) == [CLAIMED]
