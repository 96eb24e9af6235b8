"""The pkcs11 root-key provider on SoftHSM2: raw wrap/unwrap throughput, and authenticated record reads against the
`local` provider in the same run.

    python bench/bench_pkcs11.py [--seconds 5] [--rounds 5] [--connections 64] [--warmup 0.5] [--ops 5000]
                                 [--quick] [--json FILE]

1. Raw: a fresh SoftHSM2 token store in a temp dir (tests/helpers/softhsm.py), a Pkcs11Provider, and `--ops` wraps then
   unwraps of a 32-byte key with a 40-byte AAD, 1 thread (median of 5 repeats, best in brackets) and 4 threads
   sharing the provider (every call serialised by the module lock, see kms/pkcs11.py); the local provider (sealed file,
   AES-GCM in process) the same way, for reference.
2. HTTP: two real servers (`vault.cli serve`, one uvicorn process each, fresh data dirs): one on `local`, one on
   `pkcs11` with its root key in the SoftHSM2 token. Each gets a patient, a login and one small record; one read
   warms the key cache; then R interleaved rounds (order alternating) of the closed-loop loader (bench/loadgen.py)
   on `GET /v1/records/{id}`. Prints req/s per round, medians, latency, server CPU per request and the ratio
   pkcs11/local with PASS/FAIL against 0.80 (issue 6: within 80 % of the local provider in the same run).

Exit status 0 unless a request failed or a server died; missing the target is reported, not an error.
`--quick`: 1 round x 1 s, 8 connections, 1000 raw ops.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rounds import add_round_arguments, print_summary, run_rounds, summarize
from _server import REPO_ROOT, ServerError, VaultServer, loadavg

TARGET_RATIO = 0.80
AAD = b"hv/kek/v1\0\x00\x00\x00\x01" + b"p" * 26  # 40 bytes, the size of a KEK wrap's AAD


def _timed(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def _threaded(fn, n: int, threads: int) -> float:
    per = max(1, n // threads)
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            for _ in range(per):
                fn()
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} thread(s) failed: {errors[0]!r}")
    return per * threads / elapsed


def raw_ops(provider, ops: int) -> dict:
    key = os.urandom(32)
    version, wrapped = provider.wrap(key, AAD)
    assert provider.unwrap(version, wrapped, AAD) == key

    def wrap() -> None:
        provider.wrap(key, AAD)

    def unwrap() -> None:
        provider.unwrap(version, wrapped, AAD)

    result = {}
    for name, fn in (("wrap", wrap), ("unwrap", unwrap)):
        runs = [_timed(fn, ops) for _ in range(5)]
        result[name] = {"ops_s": statistics.median(runs), "best": max(runs),
                        "us_per_op": 1e6 / statistics.median(runs)}
    result["unwrap_4_threads"] = {"ops_s": _threaded(unwrap, ops, 4)}
    return result


def _fmt_raw(name: str, figures: dict) -> str:
    return (f"  {name:7s} wrap {figures['wrap']['ops_s']:>10,.0f} ops/s ({figures['wrap']['best']:,.0f}) "
            f"{figures['wrap']['us_per_op']:6.1f} µs   unwrap {figures['unwrap']['ops_s']:>10,.0f} ops/s "
            f"({figures['unwrap']['best']:,.0f}) {figures['unwrap']['us_per_op']:6.1f} µs   "
            f"unwrap x4 threads {figures['unwrap_4_threads']['ops_s']:>10,.0f} ops/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_round_arguments(parser)
    parser.add_argument("--ops", type=int, default=5000, help="raw wrap/unwrap operations per repeat (default 5000)")
    parser.add_argument("--quick", action="store_true", help="smoke size: 1 round x 1 s, 8 connections, 1000 ops")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.connections, args.warmup, args.ops = 1.0, 1, 8, 0.3, 1000
    if args.rounds < 1 or args.seconds <= 0 or args.connections < 1 or args.ops < 1:
        parser.error("need --rounds >= 1, --seconds > 0, --connections >= 1, --ops >= 1")

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.helpers import softhsm

    reason = softhsm.missing()
    if reason:
        print(f"ERROR: SoftHSM2 is not usable: {reason}", file=sys.stderr)
        return 1
    hsm = softhsm.process_softhsm()  # sets SOFTHSM2_CONF for this process and the servers it starts

    from kms import LocalProvider, Pkcs11Provider

    print(f"bench_pkcs11: python {platform.python_version()}, {os.cpu_count()} CPUs, module {hsm.module}")
    print(f"load average before: {loadavg()}")

    # --- 1. raw provider operations ----------------------------------------------------------------------------
    p11 = Pkcs11Provider.open(module=hsm.module, token_label=hsm.token_label, pin=hsm.pin,
                              key_label="bench-" + uuid.uuid4().hex[:12], create=True)
    with tempfile.TemporaryDirectory(prefix="hv-bench-local-") as tmp:
        local = LocalProvider.create(Path(tmp) / "root.key", b"bench passphrase", kdf_params={"t": 1, "m": 1024,
                                                                                                  "p": 1})
        raw = {"pkcs11": raw_ops(p11, args.ops), "local": raw_ops(local, args.ops)}
    p11.close()
    print(f"raw root-key operations (32-byte key, 40-byte AAD; median of 5 x {args.ops}, best in brackets):")
    for name in ("pkcs11", "local"):
        print(_fmt_raw(name, raw[name]))

    # --- 2. record reads over HTTP, both providers in the same run ---------------------------------------------
    pkcs11_env = {"HEALTHVAULT_KMS_PROVIDER": "pkcs11", "HEALTHVAULT_PKCS11_MODULE": hsm.module,
                  "HEALTHVAULT_PKCS11_TOKEN_LABEL": hsm.token_label,
                  "HEALTHVAULT_PKCS11_KEY_LABEL": "bench-http-" + uuid.uuid4().hex[:12],
                  "HEALTHVAULT_PKCS11_PIN": hsm.pin, **hsm.env()}
    rounds: list[dict] = []
    try:
        with VaultServer() as local_server, VaultServer(env=pkcs11_env) as p11_server:
            cases = {}
            for name, server in (("local", local_server), ("pkcs11", p11_server)):
                auth = server.register_and_login()
                record = server.upload_small(auth)
                path = f"/v1/records/{record['record_id']}"
                status, body = server.request("GET", path, headers=auth)  # warms the key cache
                if status != 200:
                    raise ServerError(f"{name}: GET {path} -> {status}: {body!r}")
                cases[name] = (server, path, [f"{k}: {v}" for k, v in auth.items()])
            if (p11_server.tmp / "var" / "keys" / "root.key").exists():
                raise ServerError("the pkcs11 server wrote a root key file: it is not using the token")
            print(f"servers: local pid {local_server.pid} port {local_server.port}; "
                  f"pkcs11 pid {p11_server.pid} port {p11_server.port}")
            rounds = run_rounds(cases, baseline="local", subject="pkcs11", rounds=args.rounds,
                                connections=args.connections, seconds=args.seconds, warmup=args.warmup)
    except (ServerError, RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1

    summary = summarize(rounds, ("local", "pkcs11"))
    ratio = summary["pkcs11"]["rps"] / summary["local"]["rps"] if summary["local"]["rps"] else 0.0
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print()
    print("summary (medians over rounds), GET /v1/records/{id} with the key cache warm")
    print_summary(summary, ("local", "pkcs11"))
    per_round_ratio = ", ".join(f"{r['ratio']:.3f}" for r in rounds)
    print(f"  ratio pkcs11/local {ratio:.3f} (per round: {per_round_ratio}; median of rounds "
          f"{statistics.median(r['ratio'] for r in rounds):.3f})  target >= {TARGET_RATIO:.2f}: {verdict}")
    cpu_local, cpu_p11 = (summary[n]["server_cpu_us_per_request"] for n in ("local", "pkcs11"))
    if cpu_local and cpu_p11:  # steadier than req/s on a shared machine: what one read costs the server
        print(f"  server CPU per request local/pkcs11 {cpu_local / cpu_p11:.3f} "
              f"({cpu_local:,.0f} µs vs {cpu_p11:,.0f} µs)")
    print(f"  raw SoftHSM2 through the provider: wrap {raw['pkcs11']['wrap']['ops_s']:,.0f} ops/s, "
          f"unwrap {raw['pkcs11']['unwrap']['ops_s']:,.0f} ops/s "
          f"(4 threads: {raw['pkcs11']['unwrap_4_threads']['ops_s']:,.0f} ops/s)")
    print(f"load average after: {loadavg()}")
    errors = summary["local"]["errors"] + summary["pkcs11"]["errors"]
    report = {"bench": "pkcs11", "seconds": args.seconds, "rounds_n": args.rounds, "connections": args.connections,
              "raw": raw, "summary": summary, "ratio": ratio, "target_ratio": TARGET_RATIO, "verdict": verdict,
              "errors": errors, "rounds": rounds, "loadavg": list(os.getloadavg())}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print("RESULT_JSON: " + json.dumps({k: report[k] for k in ("ratio", "verdict", "errors", "raw", "summary")}))
    if errors:
        print(f"ERROR: {errors} failed requests", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
