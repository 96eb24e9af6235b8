"""HTTP throughput of an authenticated record read against the bare /healthz endpoint of the same server.

    python bench/bench_http.py [--seconds 5] [--rounds 5] [--connections 64] [--warmup 0.5] [--quick] [--json FILE]
                               [--compare DIR]

Starts a real server (`vault.cli serve`, one uvicorn process, fresh temp data dir), registers a patient, logs in,
uploads one small record, then runs R interleaved rounds (order alternating between rounds) of the closed-loop loader
(bench/loadgen.py, its own process) against:

  * healthz  — `GET /healthz`: the ceiling of this app's HTTP stack (FastAPI + the edge middleware) on this machine;
  * records  — `GET /v1/records/{id}` with a bearer token: token lookup, consent gate, audit append, title decryption.

Prints req/s per round and the medians, p50/p99 latency, server CPU per request, the load average, and the ratio
records/healthz with PASS/FAIL against the target (≥ 0.30). The ratio is taken within the same run, so a slower or
busier machine moves both figures. Exit status: 0 unless a request failed (non-200, I/O error) or the server died;
missing the target is reported, not an error. `--quick` (CI smoke): 1 round × 1 s, 8 connections.

`--compare DIR` (an A/B of two versions in the same run): a second server runs the source tree DIR (e.g. an earlier
commit unpacked with `git archive REV | tar -x -C DIR`), and each round measures both servers, the order alternating;
the report gives each version's figures and ratio. The verdict is this tree's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rounds import add_round_arguments, print_summary, run_rounds, summarize
from _server import ServerError, VaultServer, loadavg

TARGET_RATIO = 0.30


def _cases(server: VaultServer, label: str) -> dict[str, tuple]:
    """The two cases against one started server: a registered patient, one small record."""
    auth = server.register_and_login()
    record = server.upload_small(auth)
    record_path = f"/v1/records/{record['record_id']}"
    status, body = server.request("GET", record_path, headers=auth)
    if status != 200:
        raise ServerError(f"GET {record_path} → {status}: {body!r}")
    print(f"{label}: server pid {server.pid} on port {server.port}; record {record['record_id']} "
          f"({record.get('size_bytes')} bytes)")
    auth_header = [f"{k}: {v}" for k, v in auth.items()]
    return {"healthz": (server, "/healthz", []), "records": (server, record_path, auth_header)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_round_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="CI smoke size: 1 round x 1 s, 8 connections")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp data dir and server log")
    parser.add_argument("--compare", type=Path, help="also run the source tree DIR in the same rounds (A/B)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.connections, args.warmup = 1.0, 1, 8, 0.3
    if args.rounds < 1 or args.seconds <= 0 or args.connections < 1:
        parser.error("need --rounds >= 1, --seconds > 0, --connections >= 1")

    print(f"bench_http: {args.rounds} round(s) x {args.seconds:g} s (+{args.warmup:g} s warm-up), "
          f"{args.connections} connections, python {platform.python_version()}, {os.cpu_count()} CPUs")
    print(f"load average before: {loadavg()}")
    rounds: list[dict] = []
    other: list[dict] = []
    failures: list[str] = []
    try:
        with contextlib.ExitStack() as servers:
            cases = _cases(servers.enter_context(VaultServer(keep=args.keep)), "this tree")
            other_cases = None
            if args.compare:
                other_cases = _cases(servers.enter_context(VaultServer(keep=args.keep, root=args.compare.resolve())),
                                     str(args.compare))
            for index in range(args.rounds):
                runs = [("this tree", cases, rounds), ("compared", other_cases, other)]
                for label, these, results in (runs if index % 2 == 0 else runs[::-1]):
                    if these is None:
                        continue
                    if other_cases is not None:
                        print(f"[{label}]")
                    results += run_rounds(these, baseline="healthz", subject="records", rounds=1,
                                          connections=args.connections, seconds=args.seconds, warmup=args.warmup)
    except (ServerError, RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    if other:
        other_summary = summarize(other, ("healthz", "records"))
        other_ratio = other_summary["records"]["rps"] / other_summary["healthz"]["rps"] \
            if other_summary["healthz"]["rps"] else 0.0
        print()
        print(f"compared tree {args.compare} (medians over rounds)")
        print_summary(other_summary, ("healthz", "records"))
        other_per_round = ", ".join(f"{r['ratio']:.3f}" for r in other)
        print(f"  ratio records/healthz {other_ratio:.3f} (per round: {other_per_round})")
        failures += [f"compared {name}: {other_summary[name]['errors']} failed requests"
                     for name in ("healthz", "records") if other_summary[name]["errors"]]

    summary = summarize(rounds, ("healthz", "records"))
    failures += [f"{name}: {summary[name]['errors']} failed requests" for name in ("healthz", "records")
                 if summary[name]["errors"]]
    ratio = summary["records"]["rps"] / summary["healthz"]["rps"] if summary["healthz"]["rps"] else 0.0
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print()
    print("summary (medians over rounds)")
    print_summary(summary, ("healthz", "records"))
    per_round_ratio = ", ".join(f"{r['ratio']:.3f}" for r in rounds)
    print(f"  ratio records/healthz {ratio:.3f} (per round: {per_round_ratio})  "
          f"target >= {TARGET_RATIO:.2f}: {verdict}")
    print(f"load average after: {loadavg()}")
    report = {"bench": "http", "seconds": args.seconds, "rounds_n": args.rounds, "connections": args.connections,
              "summary": summary, "ratio": ratio, "target_ratio": TARGET_RATIO, "verdict": verdict,
              "errors": summary["healthz"]["errors"] + summary["records"]["errors"], "rounds": rounds,
              "loadavg": list(os.getloadavg())}
    if other:
        report["compared"] = {"tree": str(args.compare), "summary": other_summary, "ratio": other_ratio,
                              "rounds": other}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print("RESULT_JSON: " + json.dumps({k: report[k] for k in ("ratio", "verdict", "errors", "summary")}))
    if failures:
        print("ERROR: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
