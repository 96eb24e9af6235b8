"""OCR out of the server process: one long-lived child process runs `ocr.extract` under CPU, memory and time limits.

Owns the child's lifecycle and the protocol. The child (`python -m vault.labs.ocr_worker`, a fresh interpreter, never
a fork of the threaded server) imports only `ocr`, loads the OCR engine once (the 2-3 s model load is paid per child,
not per page), then caps itself: RLIMIT_AS at its loaded size plus `memory_bytes`, no core files, and before each job
RLIMIT_CPU's soft limit at the CPU seconds used so far plus `cpu_seconds` (SIGXCPU ends it). The parent waits at most
`wall_seconds` per page and kills the child past that. A child that died (a limit hit, a crash) or was killed is
re-spawned for the next job. Bytes go in; the LabReport JSON or an error code comes out, over the child's own pipes
(length-prefixed frames; the child's fd 1 is pointed at its stderr, which goes to /dev/null, so nothing a library
prints can corrupt a frame or reach a log).
Outcomes are stable error codes: the ocr package's (`too_large`, `corrupt_input`, ...; an allocation refused under
RLIMIT_AS surfaces as `too_large`), `cpu_limit` (killed by SIGXCPU), `worker_crashed` (any other death),
`timeout` (wall clock), `worker_unavailable` (the child could not be started).
Never: decodes a page in the server process, lets a child's failure raise into the caller, keeps a page's bytes after
its job, or passes identities, keys, secrets or database handles to the child (it gets bytes only, and an environment
without the server's HEALTHVAULT_* settings but the OCR engine's).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import IO, Any

_FRAME = struct.Struct(">Q")
MAX_REPLY = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 60           # CPU time of one page (both cores' time counts)
    memory_bytes: int = 2 << 30     # address space a page may add to the loaded child
    wall_seconds: float = 120.0     # wall clock of one page, as the server waits for it
    start_seconds: float = 120.0    # wall clock for a new child to load its engine


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: str                     # "done" | "needs_review" | "failed"
    error: str | None               # a stable code when failed
    payload: str | None             # the LabReport JSON


class _Dead(Exception):
    """The child is gone (EOF, broken pipe) or did not answer in time."""


def _write_frame(stream: IO[bytes], data: bytes) -> None:
    stream.write(_FRAME.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, left = [], size
    while left:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise _Dead("end of stream")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float | None, limit: int) -> bytes:
    (size,) = _FRAME.unpack(_read_exact(fd, _FRAME.size, deadline))
    if size > limit:
        raise _Dead("oversized frame")
    return _read_exact(fd, size, deadline)


class OcrWorker:
    """One child process, one page at a time (callers queue on a lock: the extraction job pool has one thread)."""

    def __init__(self, limits: Limits | None = None, *, warm: bool = True) -> None:
        self.limits = limits or Limits()
        self.warm = warm
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self.spawned = 0
        self.last_load_seconds: float | None = None

    # -- parent side --------------------------------------------------------------------------------------------------
    def extract(self, data: bytes) -> Outcome:
        """The page's outcome; never raises."""
        with self._lock:
            try:
                child = self._ensure()
            except Exception:  # noqa: BLE001 - a child that cannot start fails the job, not the server
                self._kill()
                return Outcome("failed", "worker_unavailable", None)
            assert child.stdin is not None and child.stdout is not None
            try:
                _write_frame(child.stdin, data)
                reply = json.loads(_read_frame(child.stdout.fileno(), time.monotonic() + self.limits.wall_seconds,
                                               MAX_REPLY))
            except TimeoutError:
                self._kill()
                return Outcome("failed", "timeout", None)
            except (_Dead, OSError, ValueError):
                return Outcome("failed", self._reap(), None)
            if reply.get("ok"):
                return Outcome("needs_review" if reply["needs_review"] else "done", None, reply["report"])
            return Outcome("failed", str(reply.get("code") or "extraction_failed")[:32], None)

    def pid(self) -> int | None:
        child = self._child
        return child.pid if child is not None and child.poll() is None else None

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _ensure(self) -> subprocess.Popen[bytes]:
        child = self._child
        if child is not None and child.poll() is None:
            return child
        self._child = None
        env = _child_env()
        limits = self.limits
        args = [sys.executable, "-m", "vault.labs.ocr_worker", str(limits.cpu_seconds), str(limits.memory_bytes),
                "1" if self.warm else "0"]
        started = time.monotonic()
        child = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,  # noqa: S603 - fixed argv
                                 stderr=subprocess.DEVNULL, env=env, close_fds=True, start_new_session=True)
        self._child = child
        self.spawned += 1
        assert child.stdout is not None
        try:
            ready = json.loads(_read_frame(child.stdout.fileno(), started + limits.start_seconds, 4096))
        except (TimeoutError, _Dead, OSError, ValueError) as exc:
            raise RuntimeError("the OCR worker did not start") from exc
        if not ready.get("ready"):
            raise RuntimeError("the OCR worker did not start")
        self.last_load_seconds = float(ready.get("load_seconds", 0.0))
        return child

    def _reap(self) -> str:
        """The code for a child that stopped answering: why it died, after collecting it."""
        child, self._child = self._child, None
        if child is None:
            return "worker_crashed"
        try:
            code = child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            return "worker_crashed"
        finally:
            _close_pipes(child)
        return "cpu_limit" if code == -signal.SIGXCPU else "worker_crashed"

    def _kill(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if child.poll() is None:
            child.kill()
        child.wait()
        _close_pipes(child)


def _child_env() -> dict[str, str]:
    """The server's environment without its secrets: no HEALTHVAULT_* variable (passphrase, development root key,
    PKCS#11 PIN, database URLs) except the OCR engine's own settings (HEALTHVAULT_OCR_*)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HEALTHVAULT_") or k.startswith("HEALTHVAULT_OCR_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


_SHARED: OcrWorker | None = None
_SHARED_LOCK = threading.Lock()


def shared() -> OcrWorker:
    """This process's worker (one child per server process), closed at exit."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = OcrWorker()
            atexit.register(_SHARED.close)
        return _SHARED


def _close_pipes(child: subprocess.Popen[bytes]) -> None:
    for stream in (child.stdin, child.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass


# -- child side -------------------------------------------------------------------------------------------------------
def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _out_of_memory(exc: BaseException | None) -> bool:
    """Whether a failure was an allocation refused under RLIMIT_AS: a MemoryError, OpenCV's StsNoMem (-4) or a C++
    std::bad_alloc surfacing through a library, anywhere in the cause chain."""
    depth = 0
    while exc is not None and depth < 8:
        if isinstance(exc, MemoryError) or "bad_alloc" in type(exc).__name__ + str(exc)[:200]:
            return True
        if type(exc).__module__.startswith("cv2") and getattr(exc, "code", None) == -4:
            return True
        exc, depth = exc.__cause__ or exc.__context__, depth + 1
    return False


def _child_main(argv: list[str]) -> int:
    cpu_seconds, memory_bytes, warm = int(argv[0]), int(argv[1]), argv[2] == "1"
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints goes where stderr goes (/dev/null), never into a frame
    proto_in = sys.stdin.buffer
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    started = time.monotonic()
    import ocr
    from ocr.errors import OCRError

    if warm:
        from ocr import engine

        engine.get_engine()
    load_seconds = time.monotonic() - started
    limit = _address_space() + memory_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    _write_frame(proto_out, json.dumps({"ready": True, "load_seconds": load_seconds}).encode())
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    while True:
        try:
            data = _read_frame(proto_in.fileno(), None, 1 << 40)
        except _Dead:
            return 0  # the server closed the pipe (or went away)
        soft = int(_cpu_used()) + cpu_seconds + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft if cpu_hard == resource.RLIM_INFINITY else min(soft, cpu_hard),
                                                 cpu_hard))
        reply: dict[str, Any]
        try:
            report = ocr.extract(data)
            reply = {"ok": True, "report": report.to_json(), "needs_review": bool(report.needs_review)}
        except OCRError as exc:
            reply = {"ok": False, "code": "too_large" if _out_of_memory(exc) else exc.code}
        except MemoryError:
            reply = {"ok": False, "code": "too_large"}
        except Exception:  # noqa: BLE001 - one page never ends the worker
            reply = {"ok": False, "code": "extraction_failed"}
        del data
        try:
            encoded = json.dumps(reply).encode()
        except MemoryError:
            encoded = b'{"ok": false, "code": "too_large"}'
        _write_frame(proto_out, encoded)


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
