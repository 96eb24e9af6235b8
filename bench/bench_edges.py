"""What the edge checks cost a record read: A/B in one run of bench_http.py against a copy of this tree without them.

    python bench/bench_edges.py [--variant edges|metrics|console|none] [--seconds 5] [--rounds 5]
                                [--connections 64] [--warmup 0.5] [--quick] [--keep-tree] [--json FILE]

A is this tree as it is. B is a copy of it (the files git tracks plus untracked, not ignored ones: the working tree,
uncommitted changes included) with one set of per-request work taken out by exact text substitutions, each of which
must match the stated number of times or the bench stops before measuring (a renamed function cannot silently turn
B into A):

  * edges (issue 14's target): the rate limits are no-ops (vault/access/ratelimit.py's `check` returns at once) and
    the key-state watcher is not started (vault/cli/serve.py builds it but never starts its thread);
  * metrics: the request-metrics middleware (api/ops.py) is not installed;
  * console: the console's routes (api/console, tried first for every request) are not mounted;
  * none: nothing (an A/A run: how far from 1 the ratio strays on this machine by noise alone).

Then bench/bench_http.py runs both servers in the same interleaved rounds (`--compare B`) and this prints each
side's record-read req/s (`GET /v1/records/{id}` with a bearer token), the healthz ceiling, the per-round and median
ratios A/B, the cost 1 - A/B, and PASS/FAIL against the target: the checks cost at most 5 % of the record-read
req/s; also each side's server CPU per read. The load average is printed before and after (the machine is shared:
only same-run ratios mean anything; `--variant none`, an A/A run, shows how far noise alone moves the ratio).
For `edges` it then measures without the load generator's noise, on a fresh server of each tree: how many rate-limit
attempts a record read counts (none: the limits guard registration, sign-in, TOTP and password change, not reads),
and the idle server's CPU per second, whose difference A - B is what the key-state watcher's polls cost.
Exit status: bench_http's (non-zero on failed requests or a dead server), or 2 when a substitution did not match.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rounds import add_round_arguments
from _server import VaultServer, loadavg

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGET_COST = 0.05

# (file, exact text, replacement, how many times the text must occur)
VARIANTS: dict[str, list[tuple[str, str, str, int]]] = {
    "edges": [
        ("vault/access/ratelimit.py",
         "    settings = vault.settings\n    window = dt.timedelta(seconds=settings.rate_limit_window_seconds)\n",
         "    return  # bench_edges: rate limits off\n"
         "    settings = vault.settings\n    window = dt.timedelta(seconds=settings.rate_limit_window_seconds)\n", 1),
        ("vault/cli/serve.py", "watcher = keystate.watch(vault)",
         "watcher = keystate.KeyStateWatcher(vault)  # bench_edges: built, never started", 2),
    ],
    "metrics": [
        ("api/app.py", "    app.add_middleware(ops.MetricsMiddleware)",
         "    pass  # bench_edges: no metrics middleware", 1),
    ],
    "console": [
        ("api/app.py", "    console.mount(app)", "    pass  # bench_edges: no console", 1),
    ],
    "none": [],  # A/A: B is an unchanged copy, so the spread of the ratio around 1 is this machine's noise
}


LEFT_OUT = {"edges": "the rate limits and the key-state watcher", "metrics": "the metrics middleware",
            "console": "the console's routes", "none": "nothing (A/A)"}


class SubstitutionMissing(RuntimeError):
    pass


def copy_tree(destination: Path) -> int:
    """This repository's working tree (tracked and untracked-not-ignored files) into `destination`; file count."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.split(b"\0")
    copied = 0
    for raw in filter(None, listed):
        source = REPO / raw.decode()
        if not source.is_file():  # deleted in the working tree
            continue
        target = destination / raw.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        copied += 1
    return copied


def substitute(tree: Path, edits: list[tuple[str, str, str, int]]) -> None:
    """Apply every edit to the copy; SubstitutionMissing (nothing measured) when a text does not occur as stated."""
    for relative, old, new, times in edits:
        path = tree / relative
        text = path.read_text()
        found = text.count(old)
        if found != times:
            raise SubstitutionMissing(f"{relative}: expected {times} occurrence(s) of {old!r}, found {found}")
        path.write_text(text.replace(old, new))
        print(f"  B: {relative}: {times} x {old.strip().splitlines()[0]!r} -> {new.strip().splitlines()[0]!r}")


def _rps(rounds: list[dict], case: str, key: str = "rps") -> list[float]:
    return [r[case][key] for r in rounds if r[case][key] is not None]


def report(data: dict, variant: str) -> dict:
    """Each side's figures, the per-round and median ratio A/B and the verdict, printed and returned."""
    a_rounds, b_rounds = data["rounds"], data["compared"]["rounds"]
    a_rec, b_rec = _rps(a_rounds, "records"), _rps(b_rounds, "records")
    a_med, b_med = statistics.median(a_rec), statistics.median(b_rec)
    per_round = [a / b for a, b in zip(a_rec, b_rec, strict=True) if b]
    ratio = statistics.median(per_round) if per_round else 0.0
    cost = 1.0 - ratio
    verdict = "PASS" if cost <= TARGET_COST else "FAIL"
    print()
    print(f"bench_edges [{variant}]: A = this tree, B = the copy without {LEFT_OUT[variant]}")
    print(f"  records  A {a_med:>9,.0f} req/s  [{', '.join(f'{v:,.0f}' for v in a_rec)}]")
    print(f"  records  B {b_med:>9,.0f} req/s  [{', '.join(f'{v:,.0f}' for v in b_rec)}]")
    print(f"  healthz  A {statistics.median(_rps(a_rounds, 'healthz')):>9,.0f} req/s   "
          f"B {statistics.median(_rps(b_rounds, 'healthz')):>9,.0f} req/s")
    print(f"  ratio A/B per round {', '.join(f'{r:.3f}' for r in per_round)}; median {ratio:.3f} "
          f"(of the medians {a_med / b_med if b_med else 0.0:.3f})")
    # Server CPU per request (the whole process, the watcher thread included) moves less with the machine's load.
    cpu = "server_cpu_us_per_request"
    a_cpu, b_cpu = _rps(a_rounds, "records", cpu), _rps(b_rounds, "records", cpu)
    cpu_a, cpu_b = (statistics.median(a_cpu) if a_cpu else 0.0), (statistics.median(b_cpu) if b_cpu else 0.0)
    print(f"  server CPU per record read  A {cpu_a:,.0f} µs  B {cpu_b:,.0f} µs  "
          f"(A/B {cpu_a / cpu_b if cpu_b else 0.0:.3f}; per round A {', '.join(f'{v:,.0f}' for v in a_cpu)}, "
          f"B {', '.join(f'{v:,.0f}' for v in b_cpu)})")
    print(f"  cost of what B leaves out {cost * 100:+.1f} % of record-read req/s (1 - median ratio); "
          f"target <= {TARGET_COST * 100:.0f} %: {verdict}")
    print(f"load average after: {loadavg()}")
    return {"variant": variant, "a_rps": a_med, "b_rps": b_med, "per_round": per_round, "ratio": ratio, "cost": cost,
            "a_cpu_us": cpu_a, "b_cpu_us": cpu_b, "target_cost": TARGET_COST, "verdict": verdict,
            "loadavg": list(os.getloadavg())}


def _rate_limit_hits(server: VaultServer) -> int:
    assert server.tmp is not None
    with contextlib.closing(sqlite3.connect(server.tmp / "var" / "vault.db")) as db:
        return int(db.execute("SELECT COALESCE(SUM(hits), 0) FROM rate_limits").fetchone()[0])


def direct(tree: Path, *, reads: int = 300, idle_seconds: float = 10.0) -> dict:
    """The edges' cost without the machine's noise, on a fresh server of each tree: rate-limit attempts counted by
    `reads` record reads (the read path takes none), and the server's CPU while idle (B's differs by the watcher's
    polls, one a second), set against one record read's CPU."""
    figures: dict[str, dict] = {}
    for label, root in (("A", REPO), ("B", tree)):
        with VaultServer(root=root) as server:
            auth = server.register_and_login()
            path = f"/v1/records/{server.upload_small(auth)['record_id']}"
            before = _rate_limit_hits(server)
            for _ in range(reads):
                status, _body = server.request("GET", path, headers=auth)
                if status != 200:
                    raise RuntimeError(f"{label}: GET {path} -> {status}")
            counted = _rate_limit_hits(server) - before
            time.sleep(2.0)  # let the start-up work settle
            cpu, started = server.cpu_seconds(), time.monotonic()
            time.sleep(idle_seconds)
            idle = (server.cpu_seconds() - cpu) / (time.monotonic() - started)
        figures[label] = {"rate_limit_hits_per_read": counted / reads, "idle_cpu_us_per_s": idle * 1e6}
        print(f"  direct {label}: rate-limit attempts counted per record read {counted / reads:.3f} "
              f"({counted} in {reads}); idle server CPU {idle * 1e6:,.0f} µs per second")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_round_arguments(parser)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="edges", help="what B leaves out")
    parser.add_argument("--keep-tree", action="store_true", help="keep the copied tree B (its path is printed)")
    parser.add_argument("--json", type=Path, help="also write the verdict as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="CI smoke size: 1 round x 1 s, 8 connections")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.connections, args.warmup = 1.0, 1, 8, 0.3
    print(f"load average before: {loadavg()}")
    work = Path(tempfile.mkdtemp(prefix="hv-bench-edges-"))
    tree = work / "tree"
    try:
        print(f"B = {copy_tree(tree)} files of {REPO} in {tree}")
        try:
            substitute(tree, VARIANTS[args.variant])
        except SubstitutionMissing as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            return 2
        results = work / "bench_http.json"
        command = [sys.executable, str(HERE / "bench_http.py"), "--compare", str(tree), "--json", str(results),
                   "--seconds", str(args.seconds), "--rounds", str(args.rounds),
                   "--connections", str(args.connections), "--warmup", str(args.warmup)]
        status = subprocess.run(command, cwd=REPO, check=False).returncode
        if not results.exists():
            print("ERROR: bench_http wrote no results", file=sys.stderr)
            return status or 1
        verdict = report(json.loads(results.read_text()), args.variant)
        if args.variant == "edges":
            print("direct figures (fresh servers, sequential, no load generator):")
            verdict["direct"] = figures = direct(tree, reads=30 if args.quick else 300,
                                                 idle_seconds=1.0 if args.quick else 10.0)
            watcher = figures["A"]["idle_cpu_us_per_s"] - figures["B"]["idle_cpu_us_per_s"]
            per_second = verdict["a_cpu_us"] * verdict["a_rps"]  # CPU the reads of this run took per second
            print(f"  the watcher's polls: {watcher:+,.0f} µs of CPU per second (idle A - idle B) = "
                  f"{watcher / per_second * 100 if per_second else 0.0:+.2f} % of the CPU the record reads used per "
                  f"second in this run; rate limits on the read path: "
                  f"{figures['A']['rate_limit_hits_per_read']:.3f} attempts per read")
        if args.json:
            args.json.write_text(json.dumps(verdict, indent=2))
        print("RESULT_JSON: " + json.dumps(verdict))
        return status
    finally:
        if args.keep_tree:
            print(f"kept {tree}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
