"""The CLI and a real server process: init, users add, serve, and the round trip over a socket."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.helpers import PASSWORD, make_id_number, pdf_bytes, stored
from tests.helpers.scan import scan_tree

PASS = "a passphrase for the cli test"


def _cli(*args: str, env: dict, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "vault.cli", *args], env=env, capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


@pytest.fixture
def cli_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHVAULT_")}
    env.update(HEALTHVAULT_DATA_DIR=str(tmp_path / "var"), HEALTHVAULT_PASSPHRASE=PASS,
               HEALTHVAULT_NEW_PASSWORD="Initial-Passw0rd!")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_init_creates_no_account_and_explains_the_admins(cli_env, tmp_path):
    out = _cli("init", env=cli_env).stdout
    assert "No account exists yet" in out and "--role sysadmin" in out and "--role auditadmin" in out
    assert (tmp_path / "var" / "keys" / "root.key").exists()
    assert oct((tmp_path / "var").stat().st_mode & 0o777) == "0o700"
    again = _cli("init", env=cli_env)  # idempotent
    assert again.returncode == 0
    added = _cli("users", "add", "--role", "doctor", "--username", "Dr.Wang", env=cli_env).stdout
    assert "created doctor account dr.wang" in added
    dup = _cli("users", "add", "--role", "doctor", "--username", "dr.wang", env=cli_env, check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr
    weak = _cli("users", "add", "--role", "auditor", "--username", "aud1", env={**cli_env,
                "HEALTHVAULT_NEW_PASSWORD": "password"}, check=False)
    assert weak.returncode != 0


def test_wrong_passphrase_and_missing_key_refuse_to_start(cli_env, tmp_path):
    missing = _cli("serve", "--port", "1", env=cli_env, check=False)
    assert missing.returncode != 0 and "healthvault init" in missing.stderr
    _cli("init", env=cli_env)
    wrong = _cli("serve", "--port", str(_free_port()), env={**cli_env, "HEALTHVAULT_PASSPHRASE": "not it"},
                 check=False)
    assert wrong.returncode != 0
    assert "passphrase" in wrong.stderr.lower() and "not it" not in wrong.stderr
    no_pass = {k: v for k, v in cli_env.items() if k != "HEALTHVAULT_PASSPHRASE"}
    prompted = _cli("users", "add", "--role", "doctor", "--username", "doc", env=no_pass, check=False, timeout=20)
    assert prompted.returncode != 0 and "HEALTHVAULT_PASSPHRASE" in prompted.stderr


def test_serve_refuses_a_public_address_without_tls(cli_env):
    _cli("init", env=cli_env)
    result = _cli("serve", "--host", "0.0.0.0", "--port", str(_free_port()), env=cli_env, check=False)
    assert result.returncode != 0 and "without TLS" in result.stderr


def test_real_server_round_trip_and_no_plaintext(cli_env, tmp_path):
    _cli("init", env=cli_env)
    port = _free_port()
    log_path = tmp_path / "var" / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "vault.cli", "serve", "--port", str(port)], env=cli_env,
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz").json() == {"status": "ok"}:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, log_path.read_text()
            time.sleep(0.2)
        id_number, name, marker = make_id_number(birth="19880808"), "欧阳测试人", "MARKER-" + os.urandom(5).hex()
        with httpx.Client(base_url=base, timeout=30) as http:
            created = http.post("/v1/patients/register", json={
                "username": "netuser", "password": PASSWORD, "real_name": name, "id_number": id_number,
                "phone": "13655556666", "consents": {"notice_version": http.get("/v1/privacy-notice").json()["version"],
                                                     "health_data": True, "id_number": True, "ocr": True}})
            assert created.status_code == 201, created.text
            token = http.post("/v1/auth/login", json={"username": "netuser", "password": PASSWORD}).json()
            headers = {"Authorization": f"Bearer {token['access_token']}"}
            data = pdf_bytes(marker + " " + os.urandom(1_000_000).hex())  # a 2 MB page, rewritten by the hygiene pass
            record = http.post("/v1/records", headers=headers, data={"category": "lab_report"},
                               files={"file": ("lab.pdf", data, "application/pdf")})
            assert record.status_code == 201, record.text
            rid = record.json()["record_id"]
            downloaded = http.get(f"/v1/records/{rid}/content", headers=headers)
            assert downloaded.content == stored(data)
            assert hashlib.sha256(downloaded.content).hexdigest() == record.json()["sha256"]
            access_token = token["access_token"]
    finally:
        server.terminate()
        server.wait(timeout=20)
    log_text = log_path.read_text()
    assert "GET /v1/records/{record_id}/content 200" in log_text  # route templates, not ids
    assert rid not in log_text and access_token not in log_text and PASSWORD not in log_text
    assert scan_tree(tmp_path / "var", [id_number, name, marker, "13655556666", access_token, PASSWORD]) == []


def test_serving_freezes_the_start_up_heap_and_collects_the_young_generation_less_often():
    import gc

    from vault.cli.serve import GC_GEN0_THRESHOLD, settle_heap

    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
