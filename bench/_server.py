"""Shared helper for the HTTP benches: a real vault server in its own process on a fresh data directory.

`VaultServer` creates a temporary data directory, runs `python -m vault.cli init` and then
`python -m vault.cli serve --host 127.0.0.1 --port P` (one uvicorn process) with the passphrase in
$HEALTHVAULT_PASSPHRASE, waits for `GET /healthz` → {"status": "ok"}, and on exit stops the process (SIGTERM, then
SIGKILL after a grace period) and deletes the directory. The server's output goes to a log file in that directory (not
a pipe nobody reads); its tail is shown when the server fails. Small blocking helpers (stdlib http.client) do the setup
calls: register, login, upload a small record.

Inherited HEALTHVAULT_* variables are dropped so a bench never touches a real deployment's data or keys.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

PASSWORD = "Str0ng-Passw0rd!"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_id_number(birth: str = "19800101") -> str:
    from vault.patients.identifiers import check_digit

    body = "110105" + birth + f"{secrets.randbelow(1000):03d}"
    return body + check_digit(body)


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} CPUs)"


class ServerError(RuntimeError):
    pass


class VaultServer:
    def __init__(self, *, env: dict[str, str] | None = None, keep: bool = False, start_timeout: float = 90.0,
                 root: Path | None = None) -> None:
        self.root = root or REPO_ROOT  # the source tree the server runs (another one for an A/B of two versions)
        self.extra_env = dict(env or {})
        self.keep = keep
        self.start_timeout = start_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.tmp: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._log = None

    # ----------------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> VaultServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def log_path(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "server.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHVAULT_")}
        env.update(HEALTHVAULT_DATA_DIR=str(self.tmp / "var"),
                   HEALTHVAULT_PASSPHRASE="bench passphrase " + secrets.token_hex(16))
        env.update(self.extra_env)
        existing = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(self.root) + (os.pathsep + existing if existing else "")
        return env

    def start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="hv-bench-"))
        env = self._env()
        self.env = env
        init = subprocess.run([sys.executable, "-m", "vault.cli", "init"], cwd=self.root, env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=180)
        if init.returncode != 0:
            raise ServerError(f"`vault.cli init` exited {init.returncode}:\n{(init.stderr + init.stdout)[-3000:]}")
        self.port = free_port()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vault.cli", "serve", "--host", self.host, "--port", str(self.port)],
            cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"server exited {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                status, body = self.request("GET", "/healthz", timeout=1.0)
                if status == 200 and body == {"status": "ok"}:
                    return
            except (OSError, http.client.HTTPException, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"server not healthy after {self.start_timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.tmp is not None and not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    # ----------------------------------------------------------------------------------------------- process stats
    def rss_bytes(self) -> int:
        """Resident set size of the server process and its children (uvicorn runs in-process; children are rare)."""
        import psutil

        proc = psutil.Process(self.pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def cpu_seconds(self) -> float:
        import psutil

        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system

    # ----------------------------------------------------------------------------------------------- HTTP helpers
    def connection(self, timeout: float = 120.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, body: dict | bytes | None = None, headers: dict | None = None,
                timeout: float = 60.0) -> tuple[int, object]:
        headers = dict(headers or {})
        if isinstance(body, dict):
            payload = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        else:
            payload = body
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        ctype = response.getheader("content-type", "")
        parsed: object = raw
        if "json" in ctype:
            parsed = json.loads(raw)
        return response.status, parsed

    def register_and_login(self) -> dict[str, str]:
        """Register a fresh patient, sign in, and return the Authorization header."""
        username = "bench." + uuid.uuid4().hex[:10]
        status, notice = self.request("GET", "/v1/privacy-notice")
        if status != 200 or not isinstance(notice, dict):
            raise ServerError(f"privacy notice → {status}: {notice!r}")
        status, body = self.request("POST", "/v1/patients/register", {
            "username": username, "password": PASSWORD, "real_name": "王测试", "id_number": make_id_number(),
            "phone": "13800138000", "consents": {"notice_version": notice["version"], "health_data": True,
                                                 "id_number": True, "ocr": True}})
        if status != 201:
            raise ServerError(f"register → {status}: {body!r}")
        status, body = self.request("POST", "/v1/auth/login", {"username": username, "password": PASSWORD})
        if status != 200 or not isinstance(body, dict) or "access_token" not in body:
            raise ServerError(f"login → {status}: {body!r}")
        return {"Authorization": f"Bearer {body['access_token']}"}

    def upload_small(self, auth: dict[str, str], data: bytes | None = None, category: str = "lab_report") -> dict:
        """Upload one small record (buffered multipart; fine for a few KB) and return the server's JSON."""
        data = data if data is not None else small_pdf(b"bench record " * 64)
        boundary = "hvbench" + secrets.token_hex(12)
        body = multipart_preamble(boundary, category) + data + multipart_epilogue(boundary)
        headers = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}
        status, reply = self.request("POST", "/v1/records", body, headers)
        if status != 201 or not isinstance(reply, dict) or "record_id" not in reply:
            raise ServerError(f"upload → {status}: {reply!r}")
        return reply


def small_pdf(text: bytes) -> bytes:
    """A valid one-page PDF (uploads pass the hygiene pass, which refuses malformed PDFs)."""
    content = b"BT /F1 9 Tf 20 700 Td (" + text.replace(b"(", b"").replace(b")", b"") + b") Tj ET"
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
               b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def multipart_preamble(boundary: str, category: str, filename: str = "bench.pdf",
                       content_type: str = "application/pdf") -> bytes:
    """Everything of a multipart/form-data body before the file's bytes (the category field, the file part head)."""
    return (f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="category"\r\n\r\n'
            f"{category}\r\n"
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode()


def multipart_epilogue(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode()
