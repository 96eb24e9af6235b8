"""Crash drills (issue 14): SIGKILL a real process in the middle of an upload, an OCR job and an audit export, then
check that nothing half-written is visible (no blob without its row, no row without its blob, no export directory
that is not complete), that a restart finishes or cleanly fails the job, and that the audit chain verifies offline.
The rewrap drill (SIGKILL of `healthvault keys rewrap`, resumed) is tests/vault/keys/test_rotation.py's
`test_rewrap_cli_killed_with_sigkill_then_resumed`, which also verifies the chain afterwards.

Embedded default (SQLite) only: the server and the CLI find everything from the data directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import CHEAP_KDF, PASSPHRASE, unique
from tests.helpers import PASSWORD, make_id_number, make_phone, pdf_bytes, stored
from tests.helpers.drills import audit_actions, blob_files, export_verifies, record_rows
from tests.helpers.server import ROOT, Server, cli_env
from vault.runtime import init_data_dir, open_vault
from vault.settings import Settings

pytestmark = pytest.mark.timeout(300)
CHUNK = 256 * 1024


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    for name in [k for k in os.environ if k.startswith("HEALTHVAULT_")]:
        monkeypatch.delenv(name)
    settings = Settings.load(tmp_path / "var")
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    return settings, cli_env(settings.data_dir, PASSPHRASE.decode())


def _patient(http: httpx.Client) -> dict:
    notice = http.get("/v1/privacy-notice").json()["version"]
    username = unique("crash")
    made = http.post("/v1/patients/register", json={
        "username": username, "password": PASSWORD, "real_name": "崩溃测试", "id_number": make_id_number(),
        "phone": make_phone(), "consents": {"notice_version": notice, "health_data": True, "id_number": True,
                                            "ocr": True}})
    assert made.status_code == 201, made.text
    token = http.post("/v1/auth/login", json={"username": username, "password": PASSWORD}).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def _multipart(boundary: str, head: bytes, stop: threading.Event, *, chunks: int) -> Iterator[bytes]:
    """A multipart body streamed slowly: the form fields, then the file in CHUNK pieces until `stop` is set."""
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\nexam_report\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.pdf\"\r\n"
           "Content-Type: application/pdf\r\n\r\n").encode()
    yield head
    for _ in range(chunks):
        if stop.is_set():
            return
        yield os.urandom(CHUNK)
        time.sleep(0.02)
    yield f"\r\n--{boundary}--\r\n".encode()


def _wait(condition, what: str, timeout: float = 60, server: Server | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if server is not None and server.proc.poll() is not None:
            pytest.fail(f"the server exited while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _largest_open_file(pid: int, directory: Path) -> int:
    """The size of the largest file process `pid` holds open under `directory` (an unlinked spool included)."""
    largest = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(str(directory)):
                largest = max(largest, fd.stat().st_size)
        except OSError:
            continue  # closed meanwhile
    return largest


def test_sigkill_during_a_streaming_upload_leaves_nothing_visible(data, tmp_path):
    settings, env = data
    server = Server(env, tmp_path / "serve.log").wait_ready()
    stop, outcome = threading.Event(), {}
    temp_dir = settings.blob_dir / "tmp"
    try:
        with httpx.Client(base_url=server.base, timeout=60) as http:
            headers = _patient(http)
            boundary = "drill" + os.urandom(8).hex()

            def send() -> None:
                try:
                    outcome["response"] = http.post(
                        "/v1/records", headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
                        content=_multipart(boundary, pdf_bytes("HALF-WRITTEN"), stop, chunks=400))
                except httpx.HTTPError as exc:
                    outcome["error"] = exc

            sender = threading.Thread(target=send)
            sender.start()
            # The upload is spooled (encrypted) into an unlinked temp file before the hygiene pass writes the temp
            # blob: watch the server's open files in the blob temp directory, deleted or not.
            _wait(lambda: _largest_open_file(server.proc.pid, temp_dir) > 2 * CHUNK,
                  "the upload's spool to grow", server=server)
            server.kill()  # mid-stream: the server never sees the end of the body
            stop.set()
            sender.join(timeout=30)
    finally:
        stop.set()
        server.kill()
    assert "response" not in outcome, "the upload cannot have completed"
    assert list(temp_dir.glob("*.part")), "the drill must have killed the server mid-write"
    assert blob_files(settings.blob_dir) == set()  # no committed blob without its row ...
    assert record_rows(settings.data_dir / "vault.db") == {}  # ... and no row without its blob

    # The one window SIGKILL cannot be timed into: after the blob's commit, before its row's. Its leftover is planted.
    orphan = settings.blob_dir / "0f" / "0f0f0f0f-0000-4000-8000-000000000000.hvb"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(os.urandom(1024))
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    restarted = Server(env, tmp_path / "serve2.log").wait_ready()
    try:
        assert list(temp_dir.glob("*.part")) == []  # the half-written temp blob was swept at start (RIP-1)
        assert not orphan.exists()  # and the committed blob without a row
        with httpx.Client(base_url=restarted.base, timeout=60) as http:
            headers = _patient(http)
            body = pdf_bytes("WHOLE") + os.urandom(300_000)
            made = http.post("/v1/records", headers=headers, data={"category": "exam_report"},
                             files={"file": ("whole.pdf", body, "application/pdf")})
            assert made.status_code == 201, made.text
            assert http.get(f"/v1/records/{made.json()['record_id']}/content",
                            headers=headers).content == stored(body)  # the sanitized copy is the record
    finally:
        restarted.stop()
    assert blob_files(settings.blob_dir) == set(record_rows(settings.data_dir / "vault.db"))
    vault = open_vault(settings, PASSPHRASE)
    try:
        assert export_verifies(vault, tmp_path / "export") > 0
    finally:
        vault.close()


def test_sigkill_during_an_ocr_job_then_the_restarted_server_finishes_it(data, tmp_path):
    from tests.ocr.sheetgen import image_sheet

    settings, env = data
    db = settings.data_dir / "vault.db"
    sheet = image_sheet().data
    server = Server(env, tmp_path / "serve.log").wait_ready()
    try:
        with httpx.Client(base_url=server.base, timeout=60) as http:
            headers = _patient(http)
            made = http.post("/v1/records", headers=headers, data={"category": "lab_report"},
                             files={"file": ("sheet.png", sheet, "image/png")})
            assert made.status_code == 201, made.text
            record_id = made.json()["record_id"]
        _wait(lambda: "lab.extract" in audit_actions(db), "the OCR job to start", server=server)
        server.kill()
    finally:
        server.kill()
    status = record_rows(db)[record_id]
    if status != "pending":
        pytest.fail(f"the OCR job finished ({status}) before the kill: the drill did not hit it")
    assert blob_files(settings.blob_dir) == {record_id}  # the upload itself is whole: row and blob

    restarted = Server(env, tmp_path / "serve2.log").wait_ready()
    try:
        _wait(lambda: record_rows(db)[record_id] != "pending", "the resumed OCR job", timeout=180, server=restarted)
        with httpx.Client(base_url=restarted.base, timeout=60) as http:
            headers = {"Authorization": headers["Authorization"]}
            assert http.get(f"/v1/records/{record_id}/content", headers=headers).content == sheet
    finally:
        restarted.stop()
    assert record_rows(db)[record_id] in ("done", "needs_review", "failed")
    assert audit_actions(db).count("lab.extract") == 2  # the killed run and the resumed one, both on record
    vault = open_vault(settings, PASSPHRASE)
    try:
        export_verifies(vault, tmp_path / "export")
    finally:
        vault.close()


def test_sigkill_during_an_audit_export_leaves_no_half_written_export(data, tmp_path):
    from vault.access import audit_append
    from vault.identity import Identity, RequestContext

    settings, env = data
    vault = open_vault(settings, PASSPHRASE)
    try:
        with vault.session() as session:
            who, ctx = Identity(account_id="drill", role="auditor"), RequestContext(request_id="drill")
            for _ in range(6000):
                audit_append.append(session, vault, identity=who, ctx=ctx, action="audit.read", outcome="allow",
                                    resource_type="audit")
            session.commit()
    finally:
        vault.close()
    out = tmp_path / "export"
    command = [sys.executable, "-m", "vault.cli", "audit", "export", "--out", str(out)]
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait(lambda: proc.poll() is not None or any(tmp_path.glob(".export.partial-*")), "the export to start")
        assert proc.poll() is None, "the export finished before the drill could kill it"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()  # never a half-written export under its name
    assert list(tmp_path.glob(".export.partial-*"))  # the killed one's scratch, hidden
    again = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-2000:]
    assert list(tmp_path.glob(".export.partial-*")) == []  # swept by the next export
    vault = open_vault(settings, PASSPHRASE)
    try:
        from vault.auditing import trail

        vkey = trail.signer(vault).vkey()
        assert export_verifies(vault, tmp_path / "export-check") > 6000
    finally:
        vault.close()
    verified = subprocess.run([sys.executable, "-m", "vault.cli", "audit", "verify", str(out), "--key", vkey],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
