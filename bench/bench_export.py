"""Server memory while a patient's PIPL-45 export is built and downloaded (issue 16).

    python bench/bench_export.py [--records 200] [--kib 256] [--quick] [--keep]

Starts a real server (`vault.cli serve`, fresh temp data dir). One patient uploads `--records` records (valid PNGs of
`--kib` KiB of incompressible pixel data each, category "other": no OCR), then:

1. a warm-up export of another patient's single record (one-time imports and allocations land in the baseline);
2. measured: `POST /v1/exports`, polling `GET /v1/exports/{id}` until done, and the streamed download of the ZIP.
   The server's RSS is sampled every ~20 ms and the kernel's high-water mark (VmHWM, reset just before) catches
   peaks between samples (the probes of bench_upload.py). Target: peak growth ≤ 64 MiB;
3. the client opens the ZIP with the passphrase (pyzipper) and checks that it holds every record and that each
   file's SHA-256 equals what the server reported at upload.

Exit status 0 unless a request failed or a check failed; a missed memory target prints FAIL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import ServerError, VaultServer, loadavg, multipart_epilogue, multipart_preamble
from bench_upload import Payload, measure_phase

MiB = 1024 * 1024
TARGET_GROWTH_MIB = 64.0
PASSPHRASE = "bench export passphrase " + secrets.token_hex(4)


def upload_png(server: VaultServer, auth: dict, size: int) -> dict:
    payload = Payload(size, 64 * 1024)
    data = b"".join(payload.chunks())
    boundary = "hvbench" + secrets.token_hex(12)
    body = (multipart_preamble(boundary, "other", filename="scan.png", content_type="image/png") + data
            + multipart_epilogue(boundary))
    status, reply = server.request("POST", "/v1/records", body,
                                   {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    if status != 201:
        raise ServerError(f"upload → {status}: {reply!r}")
    return reply


def export_and_download(server: VaultServer, auth: dict, out: Path) -> dict:
    status, reply = server.request("POST", "/v1/exports", {"passphrase": PASSPHRASE}, auth)
    if status != 202:
        raise ServerError(f"export → {status}: {reply!r}")
    export_id = reply["export_id"]
    started = time.perf_counter()
    while True:
        status, state = server.request("GET", f"/v1/exports/{export_id}", headers=auth)
        if status != 200:
            raise ServerError(f"status → {status}: {state!r}")
        if state["status"] not in ("queued", "running"):
            break
        time.sleep(0.05)
    built = time.perf_counter() - started
    if state["status"] != "done":
        raise ServerError(f"export ended {state['status']} ({state.get('error')})")
    conn = server.connection(timeout=600)
    size = 0
    try:
        conn.request("GET", f"/v1/exports/{export_id}/download", headers=auth)
        response = conn.getresponse()
        if response.status != 200:
            raise ServerError(f"download → {response.status}: {response.read()[:300]!r}")
        with open(out, "wb") as sink:
            while piece := response.read(256 * 1024):
                sink.write(piece)
                size += len(piece)
    finally:
        conn.close()
    return {"export_id": export_id, "build_s": built, "bytes": size, "state": state}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--kib", type=int, default=256, help="size of each record in KiB (default 256)")
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="CI smoke: 20 records")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.records = 20
    import pyzipper

    print(f"bench_export: {args.records} records of {args.kib} KiB, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs")
    print(f"load average before: {loadavg()}")
    errors: list[str] = []
    with VaultServer(keep=args.keep) as server, tempfile.TemporaryDirectory() as scratch:
        warm_auth = server.register_and_login()
        upload_png(server, warm_auth, 64 * 1024)
        export_and_download(server, warm_auth, Path(scratch) / "warm.zip")

        auth = server.register_and_login()
        started = time.perf_counter()
        uploaded = [upload_png(server, auth, args.kib * 1024) for _ in range(args.records)]
        print(f"uploaded {len(uploaded)} records ({args.records * args.kib / 1024:.1f} MiB) in "
              f"{time.perf_counter() - started:.1f} s; server pid {server.pid}")
        target = Path(scratch) / "export.zip"
        phase = measure_phase(server, lambda: export_and_download(server, auth, target), args.interval_ms / 1000)
        result = phase["result"]
        growth = phase["peak_growth"] / MiB
        print(f"export: built in {result['build_s']:.2f} s, downloaded {result['bytes'] / MiB:.1f} MiB; whole phase "
              f"{phase['seconds']:.2f} s, server CPU {phase['server_cpu_s']:.2f} s")
        print(f"  server RSS baseline {phase['baseline_rss'] / MiB:.1f} MiB, peak {phase['peak_rss'] / MiB:.1f} MiB "
              f"(sampled {phase['peak_rss_sampled'] / MiB:.1f} MiB over {phase['samples']} samples), "
              f"after {phase['rss_after'] / MiB:.1f} MiB")
        verdict = "PASS" if growth <= TARGET_GROWTH_MIB else "FAIL"
        print(f"  peak growth {growth:.1f} MiB (target <= {TARGET_GROWTH_MIB:.0f} MiB): {verdict}")

        expected = {r["record_id"]: r["sha256"] for r in uploaded}
        with pyzipper.AESZipFile(target) as zf:
            zf.setpassword(PASSPHRASE.encode())
            manifest = json.loads(zf.read("manifest.json"))
            found = 0
            for entry in manifest["records"]:
                digest = hashlib.sha256()
                with zf.open(entry["file"]) as member:
                    while piece := member.read(MiB):
                        digest.update(piece)
                if expected.get(entry["record_id"]) != digest.hexdigest():
                    errors.append(f"hash mismatch for {entry['file']}")
                found += 1
        print(f"  archive: {found} of {len(expected)} records, hashes {'OK' if not errors else 'MISMATCH'}")
        if found != len(expected):
            errors.append("record count mismatch")
    print(f"load average after: {loadavg()}")
    summary = {"records": args.records, "peak_growth_mib": round(growth, 2), "build_s": round(result["build_s"], 2),
               "zip_mib": round(result["bytes"] / MiB, 1), "verdict": verdict, "errors": errors}
    print("RESULT_JSON: " + json.dumps(summary))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
