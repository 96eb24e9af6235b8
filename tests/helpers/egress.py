"""The no-egress guard of the test suite (COMPLIANCE PIPL-13): non-loopback connections refused and counted.

`install()` (called by tests/conftest.py when it is imported, before any test module) patches the socket layer of
this interpreter: `socket.socket.connect`, `connect_ex` and `sendto` (TCP, UDP), `socket.getaddrinfo` (a name lookup
is itself traffic to a resolver) and asyncio's `sock_connect`. Loopback addresses (127.0.0.0/8, ::1, and IPv4-mapped
loopback), the unspecified address, AF_UNIX paths and the name `localhost` pass; anything else raises
ConnectionRefusedError and is recorded. PostgreSQL's libpq (C code) is not patched, and is always pointed at
127.0.0.1 by the suite.

Subprocesses (`healthvault serve`, CLI verbs, benches) are other interpreters: `install()` also puts
tests/helpers/egress_site on PYTHONPATH, whose sitecustomize.py installs the same guard in every Python child that
inherits the environment, and makes both append attempts to the file named by $HV_TEST_EGRESS_LOG, which the session
reads at its end (tests/conftest.py fails the run when anything was attempted).
Never: lets a refused attempt pass silently, or refuses loopback (PostgreSQL, SeaweedFS, the test servers).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOG_ENV = "HV_TEST_EGRESS_LOG"
SITE_DIR = Path(__file__).with_name("egress_site")
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})

attempts: list[str] = []
_installed = False
_real: dict[str, Any] = {}


def is_local(address: Any) -> bool:
    """Whether a socket address (a tuple, or an AF_UNIX path) stays on this machine."""
    if isinstance(address, str | bytes | bytearray):
        return True  # AF_UNIX
    if not isinstance(address, tuple) or not address:
        return True  # AF_NETLINK and the like: not an internet destination
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    return host_is_local(str(host))


def host_is_local(host: str | None) -> bool:
    if host is None or host == "" or host.lower() in LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # any other name: refused before it is even looked up
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _refuse(what: str, target: Any) -> ConnectionRefusedError:
    entry = f"pid {os.getpid()}: {what} {target!r}"
    attempts.append(entry)
    log = os.environ.get(LOG_ENV)
    if log:
        with contextlib.suppress(OSError), open(log, "a", encoding="utf-8") as handle:
            handle.write(entry + "\n")
    return ConnectionRefusedError(errno.ECONNREFUSED, f"egress refused by the test guard (PIPL-13): {what} {target!r}")


def install(*, subprocesses: bool = True) -> None:
    """Patch this interpreter (idempotent); with `subprocesses`, also guard Python children through PYTHONPATH."""
    global _installed
    if _installed:
        return
    _installed = True
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_sendto, real_getaddrinfo = socket.socket.sendto, socket.getaddrinfo
    _real.update(connect=real_connect, getaddrinfo=real_getaddrinfo)

    def connect(self: socket.socket, address: Any) -> None:
        if not is_local(address):
            raise _refuse("connect", address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not is_local(address):
            raise _refuse("connect_ex", address)
        return real_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        address = args[-1] if args else None
        if address is not None and not is_local(address):
            raise _refuse("sendto", address)
        return real_sendto(self, data, *args)  # type: ignore[arg-type]

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode("ascii", "replace") if isinstance(host, bytes) else host
        if not host_is_local(name) and not _is_ip_literal(name):
            raise _refuse("getaddrinfo", name)
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[assignment]
    socket.getaddrinfo = getaddrinfo

    from asyncio import selector_events

    real_sock_connect = selector_events.BaseSelectorEventLoop.sock_connect

    async def sock_connect(self: asyncio.AbstractEventLoop, sock: socket.socket, address: Any) -> None:
        if not is_local(address):
            raise _refuse("sock_connect", address)
        return await real_sock_connect(self, sock, address)  # type: ignore[arg-type]

    selector_events.BaseSelectorEventLoop.sock_connect = sock_connect  # type: ignore[method-assign,assignment]

    if subprocesses:
        if not os.environ.get(LOG_ENV):
            handle, path = tempfile.mkstemp(prefix="hv-egress-", suffix=".log")
            os.close(handle)
            os.environ[LOG_ENV] = path
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if str(SITE_DIR) not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([str(SITE_DIR), *paths])


def _is_ip_literal(name: str | None) -> bool:
    try:
        ipaddress.ip_address((name or "").split("%", 1)[0])
    except ValueError:
        return False
    return True


def all_attempts() -> list[str]:
    """This process's attempts and every guarded subprocess's (from the shared log), without duplicates."""
    found = list(attempts)
    log = os.environ.get(LOG_ENV)
    if log and os.path.exists(log):
        found += [line for line in Path(log).read_text(encoding="utf-8").splitlines() if line]
    return list(dict.fromkeys(found))


@contextlib.contextmanager
def expected() -> Iterator[list[str]]:
    """Attempts a test makes on purpose (the guard's own tests): collected here and kept out of the session count."""
    caught: list[str] = []
    log = os.environ.get(LOG_ENV)
    before = Path(log).read_text(encoding="utf-8") if log and os.path.exists(log) else None
    start = len(attempts)
    try:
        yield caught
    finally:
        caught.extend(attempts[start:])
        del attempts[start:]
        if log and before is not None:
            Path(log).write_text(before, encoding="utf-8")


def report(found: list[str]) -> str | None:
    """The session's verdict: None when nothing was attempted, else the failure message."""
    if not found:
        return None
    listed = "\n  ".join(found[:20])
    return f"PIPL-13: {len(found)} non-loopback connection attempt(s) during the test session:\n  {listed}"
