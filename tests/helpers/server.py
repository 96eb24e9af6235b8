"""A real `healthvault serve` process for the system tests: start it on a free loopback port, wait until it answers,
and stop it (politely, or with SIGKILL for the crash drills)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(data_dir: Path, passphrase: str) -> dict[str, str]:
    """The parent's environment (PYTHONPATH with the egress guard included) without HEALTHVAULT_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHVAULT_")}
    env.update(HEALTHVAULT_DATA_DIR=str(data_dir), HEALTHVAULT_PASSPHRASE=passphrase)
    return env


class Server:
    def __init__(self, env: dict[str, str], log_path: Path, *, tls: tuple[Path, Path] | None = None) -> None:
        self.port = free_port()
        self.tls = tls
        args = [sys.executable, "-m", "vault.cli", "serve", "--port", str(self.port)]
        if tls:
            args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def verify(self) -> ssl.SSLContext | bool:
        if not self.tls:
            return True
        return ssl.create_default_context(cafile=str(self.tls[0]))

    def wait_ready(self, timeout: float = 60) -> Server:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.base + "/healthz", verify=self.verify(), timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not come up:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no handler, no cleanup, no flush (the crash drills)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
