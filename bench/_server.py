"""Shared helper for the HTTP benches: a real vault server in its own process on a fresh data directory.

`VaultServer` creates a temporary data directory, runs `python -m vault.cli init` and then
`python -m vault.cli serve --host 127.0.0.1 --port P [--workers N]` with the passphrase in $HEALTHVAULT_PASSPHRASE,
waits for `GET /healthz` → {"status": "ok"} (and, with N > 1 processes, for every process's "Application startup
complete" in its log), and on exit stops the server (SIGTERM, then SIGKILL of its process group after a grace
period) and deletes the directory. The server's output goes to a log file in that directory (not a pipe nobody
reads); its tail is shown when the server fails. `init=False` serves a data directory the caller initialised (named
by HEALTHVAULT_DATA_DIR in `env`). Small blocking helpers (stdlib http.client) do the setup calls: register, login,
upload a small record; `cli()` runs another `healthvault` command against the same vault (e.g. `users add`).

On PostgreSQL: `pg_schema()` creates a fresh schema (its key store in a second one, `<schema>_keys`) and `pg_env()`
the variables that point a vault at it; `drop_pg_schema()` removes both.

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
from typing import BinaryIO

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

PASSWORD = "Str0ng-Passw0rd!"
PG_URL = os.environ.get("HEALTHVAULT_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_id_number(birth: str = "19800101") -> str:
    from vault.patients.identifiers import check_digit

    body = "110105" + birth + f"{secrets.randbelow(1000):03d}"
    return body + check_digit(body)


def nth_id_number(i: int) -> str:
    """The i-th of a million distinct valid ID numbers (birth dates from 1950, three-digit sequences)."""
    import datetime as dt

    from vault.patients.identifiers import check_digit

    day = dt.date(1950, 1, 1) + dt.timedelta(days=i // 1000)
    body = "110105" + day.strftime("%Y%m%d") + f"{i % 1000:03d}"
    return body + check_digit(body)


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} CPUs)"


class ServerError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------- PostgreSQL
def pg_schema(prefix: str) -> str:
    """A fresh, empty schema on the bench's PostgreSQL (its key store goes in `<name>_keys`, created on init)."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{secrets.token_hex(3)}"
    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {name}"))
    finally:
        engine.dispose()
    return name


def pg_env(schema: str) -> dict[str, str]:
    """The HEALTHVAULT_* variables of a vault whose data lives in `schema` and whose key store in `<schema>_keys`."""
    return {"HEALTHVAULT_DATABASE_URL": f"{PG_URL}?options=-csearch_path%3D{schema}",
            "HEALTHVAULT_KEYSTORE_URL": PG_URL, "HEALTHVAULT_KEYSTORE_SCHEMA": f"{schema}_keys"}


def drop_pg_schema(schema: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema}_keys CASCADE"))
    finally:
        engine.dispose()


class VaultServer:
    def __init__(self, *, env: dict[str, str] | None = None, keep: bool = False, start_timeout: float = 90.0,
                 root: Path | None = None, workers: int = 1, init: bool = True) -> None:
        self.root = root or REPO_ROOT  # the source tree the server runs (another one for an A/B of two versions)
        self.workers = workers  # server processes (`serve --workers`, PostgreSQL only)
        self.init = init  # False: the data directory named in `env` is initialised already
        self.extra_env = dict(env or {})
        self.keep = keep
        self.start_timeout = start_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.tmp: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}
        self.passphrase = "bench passphrase " + secrets.token_hex(16)  # one per vault: a restart opens it again
        self._log: BinaryIO | None = None

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
        assert self.tmp is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHVAULT_")}
        env.update(HEALTHVAULT_DATA_DIR=str(self.tmp / "var"),
                   HEALTHVAULT_PASSPHRASE=self.passphrase)
        env.update(self.extra_env)
        existing = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(self.root) + (os.pathsep + existing if existing else "")
        return env

    def start(self) -> None:
        if self.tmp is None:
            self.tmp = Path(tempfile.mkdtemp(prefix="hv-bench-"))
        env = self._env()
        self.env = env
        if self.init:
            self.cli("init", timeout=180)
            self.init = False  # a restart serves the same vault
        self.port = self.port or free_port()
        self._log = open(self.log_path, "ab")
        started_before = self._startups()
        workers = ["--workers", str(self.workers)] if self.workers > 1 else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vault.cli", "serve", "--host", self.host, "--port", str(self.port), *workers],
            cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"server exited {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                status, body = self.request("GET", "/healthz", timeout=1.0)
                # One process answering is not all of them: each logs its start-up when it serves.
                if status == 200 and body == {"status": "ok"} and (
                        self.workers == 1 or self._startups() - started_before >= self.workers):
                    return
            except (OSError, http.client.HTTPException, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"server not healthy after {self.start_timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _startups(self) -> int:
        try:
            return self.log_path.read_bytes().count(b"Application startup complete")
        except OSError:
            return 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
        """Run `python -m vault.cli ARGS` against this server's vault; its stdout, or ServerError if it failed."""
        result = subprocess.run([sys.executable, "-m", "vault.cli", *args], cwd=self.root,
                                env={**self.env, **(env or {})},
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
        if result.returncode != 0:
            raise ServerError(f"`vault.cli {args[0]}` exited {result.returncode}:\n"
                              f"{(result.stderr + result.stdout)[-3000:]}")
        return result.stdout

    def restart(self, env: dict[str, str] | None = None) -> None:
        """Stop the server and serve the same vault again (same port), with `env` added to its environment."""
        self.halt()
        self.extra_env.update(env or {})
        self.start()

    def halt(self) -> None:
        """Stop the server processes (the data directory stays)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)  # uvicorn's supervisor stops its processes itself
                self.proc.wait(timeout=15 + 5 * self.workers)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the whole group: every server process
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        self.halt()
        if self.tmp is not None and not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    # ----------------------------------------------------------------------------------------------- process stats
    def _tree(self) -> list:
        """The server process and its descendants (with --workers: uvicorn's supervisor, its server processes and
        multiprocessing's resource tracker), as psutil reads them from /proc."""
        import psutil

        root = psutil.Process(self.pid)
        return [root, *root.children(recursive=True)]

    def rss_by_process(self) -> dict[int, int]:
        """Resident set size (bytes, /proc/PID/statm) of each process of the server, by pid."""
        import psutil

        sizes = {}
        for proc in self._tree():
            try:
                sizes[proc.pid] = proc.memory_info().rss
            except psutil.Error:
                pass
        return sizes

    def rss_bytes(self) -> int:
        """Resident set size of the server process and its children, summed."""
        return sum(self.rss_by_process().values())

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of every process of the server, summed."""
        import psutil

        total = 0.0
        for proc in self._tree():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

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
