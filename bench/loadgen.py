"""Closed-loop HTTP/1.1 keep-alive load generator on raw asyncio streams (uvloop when importable).

Why not httpx: on this machine httpx.AsyncClient tops out near 200 req/s at 64 connections and burns ~1 ms of client
CPU per request (shared/MEASURED-LIMITS.md section 6), so it would measure itself, not the server. This loader sends
one pre-built request (all headers included, e.g. Authorization) per connection, waits for the whole response
(Content-Length or chunked), and sends the next one: N connections = N requests in flight.

Run it in its own process, apart from the server (the two must not share an interpreter or a GIL):

    python bench/loadgen.py --port 8000 --path /healthz --connections 64 --seconds 5 --warmup 0.5 \\
        [--header 'Authorization: Bearer ...']

It prints one JSON object on stdout: requests/s, p50/p90/p99/max latency in ms, error counts by kind and status, the
loader's own CPU time per request, and the load average. `run_subprocess()` does the spawning and parsing for the
bench scripts; `Connection` is the same wire for scripted clients that read their answers (bench/soak_workload.py).
Exit status: 0 if the run completed (even with HTTP errors; read "errors"), 2 on bad arguments, 3 if no connection
could be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_HEADER_END = b"\r\n\r\n"


def build_request(method: str, path: str, host: str, port: int, headers: list[str] | None = None,
                  body: bytes = b"") -> bytes:
    """The exact bytes sent for every request (keep-alive, optional extra headers and fixed body)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "User-Agent: healthvault-loadgen",
             "Accept: */*", "Connection: keep-alive"]
    for header in headers or ():
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"bad header {header!r}: expected 'Name: value'")
        lines.append(f"{name.strip()}: {value.strip()}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class ProtocolError(Exception):
    pass


async def _read_response(reader: asyncio.StreamReader, keep_body: bool = False) -> tuple[int, bool, bytes]:
    """Read one response; returns (status, server_wants_close, body if `keep_body` else b"").

    Raises on a malformed or truncated response."""
    head = await reader.readuntil(_HEADER_END)
    # Status line: HTTP/1.1 200 OK
    try:
        status = int(head[9:12])
    except ValueError as exc:
        raise ProtocolError(f"bad status line {head[:40]!r}") from exc
    length = -1
    chunked = False
    close = False
    # Header names are case-insensitive; lower() on a few hundred bytes is cheap next to a syscall.
    lower = head.lower()
    pos = lower.find(b"\r\ncontent-length:")
    if pos >= 0:
        end = lower.index(b"\r\n", pos + 2)
        length = int(lower[pos + 17:end])
    elif b"\r\ntransfer-encoding:" in lower and b"chunked" in lower:
        chunked = True
    if b"\r\nconnection: close" in lower:
        close = True
    body = b""
    if length > 0:
        body = await reader.readexactly(length)
    elif chunked:
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # trailers (usually none) end with an empty line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            chunk = await reader.readexactly(size + 2)
            if keep_body:
                parts.append(chunk[:-2])
        body = b"".join(parts)
    elif length < 0 and not (100 <= status < 200 or status in (204, 304)):
        # No framing: body runs to close. A benchmark target should never do this.
        body = await reader.read()
        close = True
    return status, close, body if keep_body else b""


@dataclass
class Stats:
    latencies_ns: list[int] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    warmup_requests: int = 0
    measured_ok: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def _connection(host: str, port: int, request: bytes, expect: int, stats: Stats, clock: dict,
                      stop: asyncio.Event) -> None:
    perf = time.perf_counter_ns
    reader = writer = None
    while not stop.is_set():
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                stats.error(f"connect:{type(exc).__name__}")
                await asyncio.sleep(0.05)
                continue
        t0 = perf()
        try:
            writer.write(request)
            status, close, _ = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError, ValueError) as exc:
            if stop.is_set():
                break
            if perf() >= clock["measure_from"]:
                stats.error(f"io:{type(exc).__name__}")
            writer.close()
            writer = None
            stats.reconnects += 1
            continue
        t1 = perf()
        if clock["measure_from"] <= t0 and t1 <= clock["measure_until"]:
            stats.latencies_ns.append(t1 - t0)
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            if status == expect:
                stats.measured_ok += 1
            else:
                stats.error(f"status:{status}")
        elif t0 < clock["measure_from"]:
            stats.warmup_requests += 1
        if close:
            writer.close()
            writer = None
            stats.reconnects += 1
    if writer is not None:
        writer.close()


class Connection:
    """One keep-alive connection of a scripted client: different requests in sequence, whose answers it reads.

    The fixed-request loop above is the tool for one endpoint's throughput; a workload that logs in, uploads and then
    reads what it uploaded needs each answer's body. `request()` sends a request made by `build_request` (the same
    bytes on the wire) and returns (status, body). The connection is opened on first use, reopened after the server
    closed it, and reopened before a request after `max_idle` seconds of silence (uvicorn closes keep-alive
    connections idle for 5 s; a request written into one it is closing would fail for no fault of the server). I/O
    and protocol errors reach the caller, which counts them; the connection is closed then.
    """

    def __init__(self, host: str, port: int, *, max_idle: float = 2.0) -> None:
        self.host, self.port, self.max_idle = host, port, max_idle
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last = 0.0

    async def request(self, method: str, path: str, *, headers: list[str] | None = None,
                      body: bytes = b"") -> tuple[int, bytes]:
        if self._writer is not None and time.monotonic() - self._last > self.max_idle:
            self.close()
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        try:
            self._writer.write(build_request(method, path, self.host, self.port, headers, body))
            status, close, data = await _read_response(self._reader, keep_body=True)
        except BaseException:
            self.close()
            raise
        self._last = time.monotonic()
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a whole process (all threads) from /proc; None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def _sample_cpu_at(pid: int, when_ns: int, into: list) -> None:
    await asyncio.sleep(max(0.0, (when_ns - time.perf_counter_ns()) / 1e9))
    into.append(process_cpu_seconds(pid))


def _percentile(sorted_values: list[int], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index] / 1e6


async def run_load(host: str, port: int, request: bytes | list[bytes], *, connections: int = 64,
                   seconds: float = 5.0, warmup: float = 0.5, expect_status: int = 200,
                   cpu_pid: int | None = None) -> dict:
    """Drive `connections` closed loops for warmup + seconds; statistics cover only the measured window.

    A list of requests spreads the connections over them (connection i sends request i mod len): e.g. the records of
    several patients, each with its own bearer token.

    With `cpu_pid`, that process's CPU time (e.g. the server's) is read at both edges of the window.
    """
    stats = Stats()
    stop = asyncio.Event()
    now = time.perf_counter_ns()
    clock = {"measure_from": now + int(warmup * 1e9), "measure_until": now + int((warmup + seconds) * 1e9)}
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    server_cpu: list = []
    samplers = []
    if cpu_pid:
        samplers = [asyncio.create_task(_sample_cpu_at(cpu_pid, clock[edge], server_cpu))
                    for edge in ("measure_from", "measure_until")]
    requests = request if isinstance(request, list) else [request]
    tasks = [asyncio.create_task(_connection(host, port, requests[i % len(requests)], expect_status, stats, clock,
                                             stop)) for i in range(connections)]
    await asyncio.sleep(warmup + seconds)
    stop.set()
    # Let in-flight requests finish briefly (they are outside the window and not counted), then cancel stragglers.
    done, pending = await asyncio.wait(tasks, timeout=2.0)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            stats.error(f"task:{type(task.exception()).__name__}")
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*samplers, return_exceptions=True)
    lat = sorted(stats.latencies_ns)
    completed = len(lat)
    client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    total_requests = completed + stats.warmup_requests
    server_cpu_us = None
    if len(server_cpu) == 2 and None not in server_cpu and completed:
        server_cpu_us = (server_cpu[1] - server_cpu[0]) * 1e6 / completed
    return {
        "connections": connections,
        "seconds": seconds,
        "warmup": warmup,
        "requests": completed,
        "ok": stats.measured_ok,
        "rps": completed / seconds,
        "p50_ms": _percentile(lat, 0.50),
        "p90_ms": _percentile(lat, 0.90),
        "p99_ms": _percentile(lat, 0.99),
        "max_ms": lat[-1] / 1e6 if lat else None,
        "errors": sum(stats.errors.values()),
        "error_kinds": stats.errors,
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "reconnects": stats.reconnects,
        "client_cpu_us_per_request": (client_cpu * 1e6 / total_requests) if total_requests else None,
        "server_cpu_us_per_request": server_cpu_us,
        "server_cpu_share": ((server_cpu[1] - server_cpu[0]) / seconds
                             if len(server_cpu) == 2 and None not in server_cpu else None),
        "loadavg": list(os.getloadavg()),
        "uvloop": "uvloop" in sys.modules,
    }


def _install_uvloop() -> bool:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def run_subprocess(port: int, path: str, *, host: str = "127.0.0.1", method: str = "GET",
                   headers: list[str] | None = None, connections: int = 64, seconds: float = 5.0,
                   warmup: float = 0.5, expect_status: int = 200, cpu_pid: int | None = None,
                   timeout: float | None = None, targets: list[tuple[str, list[str]]] | None = None) -> dict:
    """Run this loader in a child process (never in the server's or the caller's interpreter) and return its JSON.

    `targets` [(path, headers), ...] replaces `path` and `headers`: the connections are spread over them."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--host", host, "--port", str(port), "--path", path,
           "--method", method, "--connections", str(connections), "--seconds", str(seconds),
           "--warmup", str(warmup), "--expect-status", str(expect_status)]
    if cpu_pid:
        cmd += ["--cpu-pid", str(cpu_pid)]
    env = dict(os.environ)
    # Headers (bearer tokens) go through the environment, not argv, so they do not show in `ps`.
    env["LOADGEN_HEADERS"] = json.dumps(headers or [])
    if targets:
        env["LOADGEN_TARGETS"] = json.dumps(targets)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=timeout or (warmup + seconds + 30))
    if result.returncode != 0:
        raise RuntimeError(f"loadgen exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--header", action="append", default=[],
                        help="extra header 'Name: value' (repeatable); also read as a JSON list from $LOADGEN_HEADERS")
    parser.add_argument("--connections", "-c", type=int, default=64)
    parser.add_argument("--seconds", "-d", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--expect-status", type=int, default=200)
    parser.add_argument("--cpu-pid", type=int, help="report this process's CPU time per request (the server's)")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("need --connections >= 1, --seconds > 0, --warmup >= 0")
    headers = list(args.header)
    if os.environ.get("LOADGEN_HEADERS"):
        headers += json.loads(os.environ["LOADGEN_HEADERS"])
    # $LOADGEN_TARGETS: a JSON list of [path, [headers]] pairs the connections are spread over (instead of --path).
    targets = json.loads(os.environ["LOADGEN_TARGETS"]) if os.environ.get("LOADGEN_TARGETS") else [[args.path, []]]
    try:
        requests = [build_request(args.method.upper(), path, args.host, args.port, headers + list(extra))
                    for path, extra in targets]
    except ValueError as exc:
        parser.error(str(exc))
    if not args.no_uvloop:
        _install_uvloop()
    result = asyncio.run(run_load(args.host, args.port, requests, connections=args.connections,
                                  seconds=args.seconds, warmup=args.warmup, expect_status=args.expect_status,
                                  cpu_pid=args.cpu_pid))
    result["path"] = args.path
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    if result["requests"] == 0 and any(k.startswith("connect:") for k in result["error_kinds"]):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
