"""The suite's no-egress guard itself (COMPLIANCE PIPL-13; tests/helpers/egress.py): refused and counted in this
process, in asyncio and in Python subprocesses; loopback untouched. The attempts made here on purpose are taken out
of the session's count (`egress.expected`), so the session-end assertion still means zero unexpected attempts."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import egress

TEST_NET = "192.0.2.1"  # RFC 5737 documentation address: never routed anyway


def test_a_non_loopback_connect_is_refused_and_counted():
    with egress.expected() as caught:
        with pytest.raises(ConnectionRefusedError, match="PIPL-13"), socket.socket() as sock:
            sock.connect((TEST_NET, 443))
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((TEST_NET, 80), timeout=1)
        with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"x", (TEST_NET, 514))
        with pytest.raises(ConnectionRefusedError):
            socket.getaddrinfo("example.com", 443)
        with pytest.raises(ConnectionRefusedError), socket.socket(socket.AF_INET6) as six:
            six.connect(("2001:db8::1", 443, 0, 0))
    assert len(caught) == 5 and all(str(os.getpid()) in c for c in caught)
    assert egress.report(caught) is not None and egress.report([]) is None


def test_asyncio_connections_are_guarded_too():
    async def attempt() -> None:
        await asyncio.open_connection(TEST_NET, 443)

    with egress.expected() as caught, pytest.raises(ConnectionRefusedError):
        asyncio.run(asyncio.wait_for(attempt(), 5))
    assert caught


def test_loopback_passes():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        for host in ("127.0.0.1", "localhost"):
            with socket.create_connection((host, server.getsockname()[1]), timeout=5):
                pass
    assert egress.is_local(("::ffff:127.0.0.1", 1)) and egress.is_local("/tmp/a.sock")
    assert not egress.is_local(("10.0.0.1", 5432)) and not egress.is_local(("db.example", 5432))


def test_python_subprocesses_are_guarded_and_logged(tmp_path):
    log = tmp_path / "egress.log"
    code = (f"import socket\ntry:\n    socket.create_connection(('{TEST_NET}', 80), timeout=2)\n"
            "except ConnectionRefusedError as e:\n    print('refused', e)\n")
    env = {**os.environ, egress.LOG_ENV: str(log)}
    assert str(egress.SITE_DIR) in env["PYTHONPATH"].split(os.pathsep)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "refused" in done.stdout and "PIPL-13" in done.stdout, done.stderr
    assert TEST_NET in log.read_text()
    quiet = subprocess.run([sys.executable, "-c", "import socket; print(socket.socket.connect.__module__)"],
                           env={k: v for k, v in env.items() if k != egress.LOG_ENV}, capture_output=True, text=True,
                           timeout=60)
    assert quiet.stdout.strip() != "egress"  # outside the suite the sitecustomize does nothing


def test_the_ocr_engine_imports_openvino_without_its_telemetry(tmp_path):
    """Found by this guard: `import openvino` sends a usage event to Google Analytics (openvino_telemetry) unless $CI
    is "true" or a consent file in $HOME says no. ocr.engine.import_openvino declines it in-process. $CI is removed
    here so openvino's own CI switch cannot hide a regression."""
    if importlib.util.find_spec("openvino") is None:  # not imported here: that import would itself phone home
        pytest.skip("openvino is not installed")
    log = tmp_path / "egress.log"
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env[egress.LOG_ENV] = str(log)
    code = "from ocr import engine\nprint(engine._det_runtime(None))\nimport time\ntime.sleep(1)\n"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "openvino" in done.stdout, done.stderr[-2000:]
    assert not log.exists() or log.read_text() == ""
