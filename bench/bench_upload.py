"""Server memory and throughput for a large upload and download through the HTTP API.

    python bench/bench_upload.py [--mb 200] [--chunk-kib 64] [--quick] [--json FILE]

Starts a real server (`vault.cli serve`, fresh temp data dir), registers and logs in, then:

1. uploads `--mb` MiB as `POST /v1/records` multipart/form-data. The client builds the multipart framing by hand and
   streams the file part from a generator in `--chunk-kib` pieces over a plain socket (http.client with a declared
   Content-Length), hashing as it goes, so it never holds the file. A thread samples the server process's RSS with
   psutil every ~20 ms; the kernel's own high-water mark (VmHWM, reset through /proc/PID/clear_refs just before the
   upload) catches peaks between samples. Reports baseline RSS, peak RSS, peak growth (target ≤ 64 MiB), server CPU
   time and MiB/s end to end;
2. downloads `GET /v1/records/{id}/content` streaming, checks that its SHA-256 equals both the sha256 the server
   returned and the client's hash of what it sent (and the size), and reports MiB/s and the RSS growth likewise.

Sizes are MiB (2^20 bytes). A short warm-up upload/download runs first so that one-time allocations (imports, pools,
key caches) are in the baseline, not in the growth. Exit status: 0 unless a request failed, the hashes differ or the
server died; a missed memory target prints FAIL but exits 0. `--quick` (CI smoke): 20 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import ServerError, VaultServer, loadavg, multipart_epilogue, multipart_preamble

MiB = 1024 * 1024
TARGET_GROWTH_MIB = 64.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------ memory probes
class RssSampler:
    """Samples a process's RSS every `interval` seconds in a daemon thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                self.samples.append(self.rss())
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.samples.append(self.rss())
        except Exception:
            pass

    @property
    def peak(self) -> int:
        return max(self.samples) if self.samples else 0


def reset_hwm(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark of `pid` (Linux ≥ 4.0, same user or root)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def read_hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def baseline_rss(sampler_factory, settle: float = 0.3, n: int = 10) -> int:
    time.sleep(settle)
    probe = sampler_factory()
    values = []
    for _ in range(n):
        values.append(probe.rss())
        time.sleep(0.02)
    return int(statistics.median(values))


def measure_phase(server: VaultServer, action, interval: float) -> dict:
    """Run `action()` while sampling the server's RSS; returns the action's result and the memory figures."""
    pid = server.pid
    base = baseline_rss(lambda: RssSampler(pid))
    hwm_ok = reset_hwm(pid)
    cpu0 = server.cpu_seconds()
    t0 = time.perf_counter()
    with RssSampler(pid, interval) as sampler:
        result = action()
    elapsed = time.perf_counter() - t0
    cpu1 = server.cpu_seconds()
    hwm = read_hwm(pid) if hwm_ok else None
    peak = max(sampler.peak, hwm or 0)
    after = baseline_rss(lambda: RssSampler(pid), settle=0.2, n=5)
    return {"result": result, "seconds": elapsed, "baseline_rss": base, "peak_rss_sampled": sampler.peak,
            "peak_rss_hwm": hwm, "peak_rss": peak, "peak_growth": peak - base, "rss_after": after,
            "samples": len(sampler.samples), "server_cpu_s": cpu1 - cpu0}


# ------------------------------------------------------------------------------------------------ client
class Payload:
    """`size` bytes of a valid PNG whose IDAT chunks carry incompressible data, produced chunk by chunk and hashed on
    the fly. A PNG because the upload hygiene pass (vault/records/hygiene.py) streams a PNG's image chunks through
    unchanged: what is stored is byte for byte what was sent, so the SHA-256 round trip still proves the path, and the
    memory figure includes the hygiene pass. A 1 MiB random pool is sliced at shifting offsets, so the client's memory
    stays ~1 MiB whatever the size.
    """

    def __init__(self, size: int, chunk: int) -> None:
        if size < 64:
            raise ValueError("payload too small")
        self.size = size
        self.chunk = chunk
        self._pool = os.urandom(MiB + chunk)
        self.sha256 = hashlib.sha256()
        self.sent = 0

    def _parts(self) -> Iterator[bytes]:
        import struct
        import zlib

        def chunk(kind: bytes, body: bytes) -> bytes:
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        yield PNG_MAGIC + chunk(b"IHDR", struct.pack(">IIBBBBB", 4096, 4096, 8, 2, 0, 0, 0))
        rest = self.size - len(PNG_MAGIC) - 25 - 12
        count = -(-rest // (MiB + 12))
        bodies = rest - 12 * count
        index = 0
        for n in range(count):
            length = bodies // count + (1 if n < bodies % count else 0)
            crc = zlib.crc32(b"IDAT")
            yield struct.pack(">I", length) + b"IDAT"
            done = 0
            while done < length:
                take = min(self.chunk, length - done)
                offset = (index * 4099) % MiB
                piece = self._pool[offset:offset + take]
                crc = zlib.crc32(piece, crc)
                index += 1
                done += take
                yield piece
            yield struct.pack(">I", crc)
        yield chunk(b"IEND", b"")

    def chunks(self) -> Iterator[bytes]:
        pending = bytearray()
        for part in self._parts():
            pending += part
            while len(pending) >= self.chunk:
                piece = bytes(pending[:self.chunk])
                del pending[:self.chunk]
                self.sha256.update(piece)
                self.sent += len(piece)
                yield piece
        if pending:
            self.sha256.update(pending)
            self.sent += len(pending)
            yield bytes(pending)


def streamed_upload(server: VaultServer, auth: dict, payload: Payload, category: str = "other") -> dict:
    boundary = "hvbench" + secrets.token_hex(12)
    head = multipart_preamble(boundary, category, filename="bench.png", content_type="image/png")
    tail = multipart_epilogue(boundary)
    conn = server.connection(timeout=600)
    try:
        conn.putrequest("POST", "/v1/records", skip_accept_encoding=True)
        for name, value in auth.items():
            conn.putheader(name, value)
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Content-Length", str(len(head) + payload.size + len(tail)))
        conn.endheaders()
        send_error = None
        try:
            conn.send(head)
            for piece in payload.chunks():
                conn.send(piece)
            conn.send(tail)
        except (BrokenPipeError, ConnectionResetError) as exc:  # the server answered early (e.g. 413)
            send_error = exc
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    if response.status != 201:
        raise ServerError(f"upload → {response.status}: {raw[:500]!r}"
                          + (f" (send stopped after {payload.sent} bytes: {send_error!r})" if send_error else ""))
    return json.loads(raw)


def streamed_download(server: VaultServer, auth: dict, record_id: str, chunk: int) -> dict:
    conn = server.connection(timeout=600)
    digest = hashlib.sha256()
    received = 0
    try:
        conn.request("GET", f"/v1/records/{record_id}/content", headers=auth)
        response = conn.getresponse()
        if response.status != 200:
            raise ServerError(f"download → {response.status}: {response.read()[:500]!r}")
        declared = response.getheader("content-length")
        while True:
            piece = response.read(chunk)
            if not piece:
                break
            digest.update(piece)
            received += len(piece)
    finally:
        conn.close()
    return {"bytes": received, "sha256": digest.hexdigest(), "content_length": declared}


# ------------------------------------------------------------------------------------------------ main
def _mib(n: int | float | None) -> str:
    return "n/a" if n is None else f"{n / MiB:,.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=200.0, help="upload size in MiB (default 200)")
    parser.add_argument("--chunk-kib", type=int, default=64, help="client send/receive chunk in KiB (default 64)")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="RSS sampling interval (default 20 ms)")
    parser.add_argument("--quick", action="store_true", help="CI smoke size: 20 MiB")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp data dir and server log")
    args = parser.parse_args(argv)
    if args.quick:
        args.mb = 20.0
    size = int(args.mb * MiB)
    chunk = args.chunk_kib * 1024
    if size < 64 or chunk < 1:
        parser.error("--mb too small or --chunk-kib < 1")
    interval = args.interval_ms / 1000

    env = {}
    if size > 256 * MiB - 64 * 1024:
        env["HEALTHVAULT_MAX_UPLOAD_BYTES"] = str(size + MiB)
    print(f"bench_upload: {_mib(size)} in {args.chunk_kib} KiB chunks, RSS sampled every {args.interval_ms:g} ms, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs")
    print(f"load average before: {loadavg()}")
    errors: list[str] = []
    try:
        with VaultServer(env=env, keep=args.keep) as server:
            auth = server.register_and_login()
            print(f"server pid {server.pid} on port {server.port}")
            # Warm-up: the same streaming paths with 1 MiB, so lazy one-time allocations land in the baseline.
            warm = Payload(MiB, chunk)
            warm_reply = streamed_upload(server, auth, warm)
            streamed_download(server, auth, warm_reply["record_id"], chunk)

            payload = Payload(size, chunk)
            up = measure_phase(server, lambda: streamed_upload(server, auth, payload), interval)
            reply = up["result"]
            client_sha = payload.sha256.hexdigest()
            up_mibs = size / MiB / up["seconds"]
            print(f"upload:   {_mib(size)} in {up['seconds']:.2f} s = {up_mibs:,.1f} MiB/s end to end; "
                  f"server CPU {up['server_cpu_s']:.2f} s ({up['server_cpu_s'] * 1000 / (size / MiB):.1f} ms/MiB)")
            up_ok = up["peak_growth"] <= TARGET_GROWTH_MIB * MiB
            print(f"  server RSS baseline {_mib(up['baseline_rss'])}, peak {_mib(up['peak_rss'])} "
                  f"(sampled {_mib(up['peak_rss_sampled'])} over {up['samples']} samples, "
                  f"kernel HWM {_mib(up['peak_rss_hwm'])}), after {_mib(up['rss_after'])}")
            print(f"  peak growth {_mib(up['peak_growth'])} (target <= {TARGET_GROWTH_MIB:g} MiB): "
                  f"{'PASS' if up_ok else 'FAIL'}")
            if not server.alive():
                raise ServerError(f"server died during the upload:\n{server.log_tail()}")

            down = measure_phase(server, lambda: streamed_download(server, auth, reply["record_id"], chunk),
                                 interval)
            got = down["result"]
            down_mibs = got["bytes"] / MiB / down["seconds"]
            down_ok = down["peak_growth"] <= TARGET_GROWTH_MIB * MiB
            print(f"download: {_mib(got['bytes'])} in {down['seconds']:.2f} s = {down_mibs:,.1f} MiB/s end to end; "
                  f"server CPU {down['server_cpu_s']:.2f} s "
                  f"({down['server_cpu_s'] * 1000 / max(got['bytes'] / MiB, 1e-9):.1f} ms/MiB)")
            print(f"  server RSS baseline {_mib(down['baseline_rss'])}, peak {_mib(down['peak_rss'])}, "
                  f"peak growth {_mib(down['peak_growth'])} (target <= {TARGET_GROWTH_MIB:g} MiB): "
                  f"{'PASS' if down_ok else 'FAIL'}")

            server_sha = str(reply.get("sha256", "")).lower()
            sha_ok = client_sha == server_sha == got["sha256"]
            size_ok = got["bytes"] == size and reply.get("size_bytes") == size
            print(f"  sha256 client {client_sha[:16]}… server {server_sha[:16]}… download {got['sha256'][:16]}…: "
                  f"{'OK' if sha_ok else 'MISMATCH'}; size {got['bytes']} of {size}: "
                  f"{'OK' if size_ok else 'MISMATCH'}")
            if not sha_ok:
                errors.append("sha256 mismatch")
            if not size_ok:
                errors.append(f"size mismatch: server said {reply.get('size_bytes')}, downloaded {got['bytes']}")
            if not server.alive():
                raise ServerError(f"server died during the download:\n{server.log_tail()}")
    except (ServerError, OSError, http.client.HTTPException, ValueError) as exc:
        print(f"ERROR: {exc!r}", file=sys.stderr)
        return 1

    verdict = "PASS" if up_ok else "FAIL"
    print(f"memory target (upload peak growth <= {TARGET_GROWTH_MIB:g} MiB): {verdict}; "
          f"download growth {'within' if down_ok else 'OVER'} the same bound")
    print(f"load average after: {loadavg()}")
    report = {
        "bench": "upload", "bytes": size, "chunk": chunk,
        "upload": {k: v for k, v in up.items() if k != "result"} | {"mib_s": up_mibs, "reply": reply},
        "download": {k: v for k, v in down.items() if k != "result"} | {"mib_s": down_mibs, **got},
        "peak_growth_mib": up["peak_growth"] / MiB, "download_peak_growth_mib": down["peak_growth"] / MiB,
        "upload_mib_s": up_mibs, "download_mib_s": down_mibs, "sha256_ok": sha_ok, "size_ok": size_ok,
        "target_growth_mib": TARGET_GROWTH_MIB, "verdict": verdict, "errors": errors,
        "loadavg": list(os.getloadavg()),
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print("RESULT_JSON: " + json.dumps({k: report[k] for k in (
        "bytes", "peak_growth_mib", "download_peak_growth_mib", "upload_mib_s", "download_mib_s", "sha256_ok",
        "size_ok", "verdict", "errors")}))
    if errors:
        print("ERROR: " + "; ".join(errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
