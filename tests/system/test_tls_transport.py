"""Encryption in transit (COMPLIANCE CONF-2): a whole session through a recording relay to `healthvault serve
--tls-cert/--tls-key` shows none of its strings on the wire; plain HTTP is refused off loopback, and the TLS port
does not answer plain HTTP.

The CLI does not generate a development certificate (yet): the test makes a self-signed one for 127.0.0.1 with
`cryptography` and pins it as the client's only trust anchor.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from tests.conftest import CHEAP_KDF, PASSPHRASE, unique
from tests.helpers import PASSWORD, make_id_number, make_phone, pdf_bytes, stored
from tests.helpers.relay import RecordingRelay
from tests.helpers.scan import find_in_bytes
from tests.helpers.server import Server, cli_env
from vault.runtime import init_data_dir
from vault.settings import Settings

pytestmark = pytest.mark.timeout(180)


def dev_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 and localhost, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "healthvault test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("HEALTHVAULT_")]:
        monkeypatch.delenv(name)
    settings = Settings.load(tmp_path / "var")
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    server = Server(cli_env(settings.data_dir, PASSPHRASE.decode()), tmp_path / "serve.log",
                    tls=dev_certificate(tmp_path))
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_a_whole_session_through_a_recording_relay_shows_none_of_its_strings(tls_server):
    username, real_name, id_number, phone = unique("wire"), "传输测试人", make_id_number(), make_phone()
    marker = "WIRE-" + os.urandom(6).hex()
    body = pdf_bytes(marker) + os.urandom(200_000)
    with RecordingRelay("127.0.0.1", tls_server.port) as relay:
        with httpx.Client(base_url=f"https://127.0.0.1:{relay.port}", verify=tls_server.verify(), timeout=60) as http:
            notice = http.get("/v1/privacy-notice").json()["version"]
            made = http.post("/v1/patients/register", json={
                "username": username, "password": PASSWORD, "real_name": real_name, "id_number": id_number,
                "phone": phone, "consents": {"notice_version": notice, "health_data": True, "id_number": True,
                                             "ocr": False}})
            assert made.status_code == 201, made.text
            login = http.post("/v1/auth/login", json={"username": username, "password": PASSWORD})
            assert login.status_code == 200, login.text
            token = login.json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            record = http.post("/v1/records", headers=headers, data={"category": "exam_report", "title": marker},
                               files={"file": (f"{marker}.pdf", body, "application/pdf")})
            assert record.status_code == 201, record.text
            record_id = record.json()["record_id"]
            meta = http.get(f"/v1/records/{record_id}", headers=headers)
            assert meta.status_code == 200 and meta.json()["title"] == marker
            assert http.get(f"/v1/records/{record_id}/content", headers=headers).content == stored(body)
            profile = http.get("/v1/patients/me", headers=headers)
            assert profile.status_code == 200, profile.text
    wire = relay.recorded()
    # the whole session really went through the relay: the upload and its (sanitized) download
    assert relay.connections >= 1 and len(wire) > len(body) + len(stored(body))
    assert relay.to_server[:1] == b"\x16"  # a TLS handshake record, not an HTTP request line
    secrets = [PASSWORD, token, username, real_name, id_number, phone, marker, record_id, "/v1/records",
               "Authorization", "application/pdf"]
    assert find_in_bytes(wire, secrets) == []
    assert body[50_000:50_064] not in wire and body[150_000:150_064] not in wire


def test_the_tls_port_does_not_answer_plain_http(tls_server):
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert b'"status"' not in answer and not answer.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com"])
def test_plain_http_off_loopback_is_refused_before_anything_opens(host, tmp_path, monkeypatch):
    from vault.cli import main

    monkeypatch.setenv("HEALTHVAULT_DATA_DIR", str(tmp_path / "never-created"))
    result = CliRunner().invoke(main, ["serve", "--host", host, "--port", "1"])
    assert result.exit_code != 0 and "without TLS" in result.output
    assert not (tmp_path / "never-created").exists()
