#!/usr/bin/env python3
"""Soak (issue 14): a mixed workload for minutes on PostgreSQL with 2 server processes — no errors, no slowing down,
no memory growth.

    python bench/bench_soak.py [--minutes 10] [--clients 8] [--loaders 1] [--window 60] [--json FILE]

1. A fresh PostgreSQL schema (its key store in a second one), `healthvault init`, `healthvault serve --workers 2`
   (bench/_server.py), the vault's own settings otherwise (argon2id at its default cost, rate limits on).
2. Staff as an operator makes them: two doctors and an auditor by `healthvault users add`; each signs in the first
   time over the API (initial password changed, TOTP enrolled and activated, signed in with a code).
3. The loaders stand where a load balancer would: the server is told to believe X-Forwarded-For from loopback
   (HEALTHVAULT_TRUSTED_PROXIES=127.0.0.1; the vault believes no proxy unless told). That it does is tested, not
   assumed: a doctor signs in with one, and the auditor looks for it in the trail. If it does, every patient comes
   from an address of its own and the rate limits stay as configured; if not, the per-client limit is raised for
   the bench (HEALTHVAULT_RATE_LIMIT_PER_CLIENT) and the output says so.
4. `--loaders` processes of bench/soak_workload.py (not the server's, not this one's) run `--clients` virtual
   patients between them for `--minutes`: register, upload, list, read, download, grant to a doctor, the doctor's
   list, read and watermarked download, revoke, the doctor refused; an auditor searches the trail (the workload's
   docstring has the details). Meanwhile the resident set of every server process (uvicorn's supervisor, the two
   server processes, multiprocessing's resource tracker; psutil reads /proc/PID/statm) is sampled every
   `--sample` seconds.
5. Figures: every unexpected answer by operation and kind; p50/p99 latency per window (`--window`, 60 s: "minute")
   per operation and overall; the RSS series. Schemas dropped at the end.

Targets, printed with PASS/FAIL: 0 errors; p99 of the last window ≤ 1.5 × p99 of the second (all operations
together; needs 3 windows; each operation's ratio is printed too); summed server RSS at the end ≤ 1.10 × at the end
of the warm-up, each the resident floor over the last `--settle` seconds before it (per process the smallest sample,
summed: a password hash in flight, 64 MiB of argon2id for a second or two, is not memory the server keeps). The
warm-up (`--warmup`) defaults to the vault's key-cache age (300 s, `key_cache_max_age`), at most half the run: until
then the key cache is still filling by design (every key is kept up to that age, then swept); the growth after the
first window is printed too.
Exit status: 1 if any request failed or the server died, else 0 (a missed target is reported, not an exit status).
`--quick`: 0.25 minutes in 5-second windows, 4 clients (the CI smoke).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyotp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import PASSWORD, ServerError, VaultServer, drop_pg_schema, loadavg, pg_env, pg_schema

WORKLOAD = Path(__file__).resolve().parent / "soak_workload.py"
INITIAL_PASSWORD = "Initial-Passw0rd!"
PROBE_ADDRESS = "198.51.100.77"  # TEST-NET-2: the X-Forwarded-For probe
RAISED_CLIENT_LIMIT = "1000000"
P99_GROWTH_MAX = 1.5
RSS_GROWTH_MAX = 0.10
KEY_CACHE_AGE = 300.0  # the vault's default key_cache_max_age: the key cache fills for this long, by design


# --------------------------------------------------------------------------------------------------- staff
def _ok(reply: tuple[int, object], expected: int, what: str) -> Any:
    status, body = reply
    if status != expected:
        raise ServerError(f"{what} → {status}: {body!r}")
    return body


def first_sign_in(server: VaultServer, role: str, username: str, address: str | None = None) -> str:
    """`healthvault users add`, then what the holder does over the API: new password, TOTP enrolled and activated,
    sign-in with the next code. The bearer token."""
    server.cli("users", "add", "--role", role, "--username", username,
               env={"HEALTHVAULT_NEW_PASSWORD": INITIAL_PASSWORD})
    who = {"username": username, "password": PASSWORD}
    _ok(server.request("POST", "/v1/auth/password", {"username": username, "password": INITIAL_PASSWORD,
                                                     "new_password": PASSWORD}), 204, f"{username} password change")
    secret = _ok(server.request("POST", "/v1/auth/totp/enroll", who), 200, f"{username} TOTP enrol")["secret"]
    totp, now = pyotp.TOTP(secret), time.time()
    _ok(server.request("POST", "/v1/auth/totp/activate", {**who, "otp": totp.at(now)}), 204, f"{username} TOTP")
    headers = {"X-Forwarded-For": address} if address else None
    body = _ok(server.request("POST", "/v1/auth/login", {**who, "otp": totp.at(now + 30)}, headers=headers), 200,
               f"{username} sign-in")  # the next step's code: the activation's cannot be replayed
    return body["access_token"]


def trusts_forwarded_for(server: VaultServer, auditor: str) -> bool:
    """Did the probe sign-in (a doctor's, with X-Forwarded-For: PROBE_ADDRESS) reach the trail with that address?"""
    page = _ok(server.request("GET", "/v1/audit/events?action=login&limit=100",
                              headers={"Authorization": f"Bearer {auditor}"}), 200, "audit search")
    return any(event.get("client_addr") == PROBE_ADDRESS for event in page["items"])


# --------------------------------------------------------------------------------------------------- sampling
class RssSampler(threading.Thread):
    """Every `interval` seconds: (seconds since `start`, {pid: RSS bytes}) of every server process."""

    def __init__(self, server: VaultServer, start: float, interval: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.server, self.start_at, self.interval = server, start, interval
        self.series: list[tuple[float, dict[int, int]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(max(0.0, self.start_at + len(self.series) * self.interval - time.time())):
            try:
                self.series.append((round(time.time() - self.start_at, 1), self.server.rss_by_process()))
            except Exception:
                self.series.append((round(time.time() - self.start_at, 1), {}))


def rss_floor(series: list[tuple[float, dict[int, int]]], end: float, settle: float) -> float | None:
    """The server's resident floor before `end`: for each process its smallest RSS among the samples taken in
    (end - settle, end], summed. A password hash (argon2id, 64 MiB) is resident only while it runs and a sample may
    catch one in any process; memory the server keeps is in every sample, so a leak raises the floor."""
    floors: dict[int, int] = {}
    for t, sizes in series:
        if end - settle < t <= end:
            for pid, size in sizes.items():
                floors[pid] = min(size, floors.get(pid, size))
    return float(sum(floors.values())) if floors else None


# --------------------------------------------------------------------------------------------------- figures
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def latency_table(samples: list[list], windows: int, window: float) -> dict:
    """{op: [{n, rps, p50, p99} per window] + overall}, and "all" for every operation together."""
    by: dict[str, list[list[float]]] = {}
    for op, start, latency, _status in samples:
        index = min(windows - 1, int(start // window))
        for key in (op, "all"):
            by.setdefault(key, [[] for _ in range(windows)])[index].append(latency)
    table = {}
    for op, per_window in by.items():
        rows = [{"n": len(v), "rps": len(v) / window, "p50_ms": percentile(v, 0.5), "p99_ms": percentile(v, 0.99)}
                for v in per_window]
        every = [x for v in per_window for x in v]
        table[op] = {"windows": rows, "overall": {"n": len(every), "p50_ms": percentile(every, 0.5),
                                                  "p99_ms": percentile(every, 0.99)}}
    return table


def p99_ratio(windows: list[dict]) -> float | None:
    """p99 of the last window over p99 of the second (None with fewer than 3 windows or an empty one)."""
    if len(windows) < 3 or not windows[1]["p99_ms"] or windows[-1]["p99_ms"] is None:
        return None
    return windows[-1]["p99_ms"] / windows[1]["p99_ms"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def print_table(table: dict, windows: int, window: float) -> None:
    print(f"\nlatency p50/p99 in ms per {window:g}-s window (n = requests in the window)")
    head = "".join(f"{f'w{i + 1}':>14s}" for i in range(windows))
    print(f"  {'operation':16s}{head}{'overall':>14s}{'p99 last/w2':>12s}")
    order = [op for op in (*EXPECTED_ORDER, "all") if op in table]
    for op in order:
        cells = "".join(f"{_ms(w['p50_ms']) + '/' + _ms(w['p99_ms']):>14s}" for w in table[op]["windows"])
        overall = table[op]["overall"]
        ratio = p99_ratio(table[op]["windows"])
        print(f"  {op:16s}{cells}{_ms(overall['p50_ms']) + '/' + _ms(overall['p99_ms']):>14s}"
              f"{'-' if ratio is None else f'{ratio:.2f}':>12s}")
    counts = "".join(f"{w['n']:>14d}" for w in table["all"]["windows"])
    print(f"  {'n (all)':16s}{counts}{table['all']['overall']['n']:>14d}")
    rates = "".join(f"{w['rps']:>14.1f}" for w in table["all"]["windows"])
    print(f"  {'req/s (all)':16s}{rates}")


EXPECTED_ORDER = ("notice", "register", "login", "upload", "list", "read", "content", "grant", "shared",
                  "doctor_read", "doctor_download", "revoke", "revoked_read", "audit_search")


# --------------------------------------------------------------------------------------------------- run
def run_loaders(server: VaultServer, staff: dict, args: argparse.Namespace, start: float, until: float) -> list:
    env = {**os.environ, "SOAK_STAFF": json.dumps(staff)}  # tokens by environment, not argv (`ps` shows argv)
    share = [args.clients // args.loaders + (1 if i < args.clients % args.loaders else 0) for i in range(args.loaders)]
    procs = [subprocess.Popen([sys.executable, str(WORKLOAD), "--port", str(server.port), "--clients", str(n),
                               "--loader", str(i), "--start", str(start), "--until", str(until)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              text=True) for i, n in enumerate(share) if n]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=until - time.time() + 120)
        if proc.returncode != 0:
            raise ServerError(f"soak_workload exited {proc.returncode}: {err.strip()[-2000:]}")
        results.append(json.loads(out))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the workload (default 10)")
    parser.add_argument("--clients", type=int, default=8, help="virtual patients in flight (default 8)")
    parser.add_argument("--loaders", type=int, default=1, help="workload processes sharing the clients (default 1)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per latency window (default 60)")
    parser.add_argument("--sample", type=float, default=3.0, help="seconds between RSS samples (default 3)")
    parser.add_argument("--settle", type=float, default=15.0, help="RSS: median over this many seconds (default 15)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="RSS baseline at this many seconds (default: the key-cache age, 300, at most half)")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 0.25 min, 5-s windows, 4 clients")
    parser.add_argument("--json", type=Path, help="also write the full report (every window, the RSS series) here")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and the server log")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.window, args.clients, args.sample, args.settle = 0.25, 5.0, 4, 1.0, 3.0
    if args.minutes <= 0 or args.clients < 1 or not 1 <= args.loaders <= args.clients or args.window <= 0:
        parser.error("need --minutes > 0, --clients >= 1, 1 <= --loaders <= --clients, --window > 0")
    seconds = args.minutes * 60
    windows = max(1, round(seconds / args.window))
    print(f"bench_soak: {args.minutes:g} min on PostgreSQL, `serve --workers 2`, {args.clients} clients in "
          f"{args.loaders} workload process(es), {windows} window(s) of {args.window:g} s; load average before: "
          f"{loadavg()}", flush=True)
    schema = pg_schema("hvsoak")
    report: dict = {"bench": "soak", "minutes": args.minutes, "clients": args.clients, "window_s": args.window,
                    "loadavg_before": list(os.getloadavg())}
    try:
        with VaultServer(env={**pg_env(schema), "HEALTHVAULT_TRUSTED_PROXIES": "127.0.0.1"}, workers=2,
                         keep=args.keep, start_timeout=180) as server:
            print(f"server: pids {sorted(server.rss_by_process())} (supervisor {server.pid}) on port {server.port}, "
                  f"schema {schema}", flush=True)
            auditor = first_sign_in(server, "auditor", "soak.auditor")
            doctors = [{"username": f"soak.dr{i}", "token": first_sign_in(server, "doctor", f"soak.dr{i}",
                                                                          PROBE_ADDRESS)} for i in range(2)]
            xff = trusts_forwarded_for(server, auditor)
            if xff:
                rate_note = ("the server takes the client address from X-Forwarded-For (trusted proxy 127.0.0.1): "
                             "each patient has its own address, rate limits as configured")
            else:
                server.restart({"HEALTHVAULT_RATE_LIMIT_PER_CLIENT": RAISED_CLIENT_LIMIT})
                rate_note = (f"the server ignores X-Forwarded-For: every patient comes from 127.0.0.1, so for this "
                             f"bench HEALTHVAULT_RATE_LIMIT_PER_CLIENT={RAISED_CLIENT_LIMIT} (server restarted)")
            print(f"rate limits: {rate_note}", flush=True)
            start = time.time() + 2.0  # the loaders start (imports, uvloop) before the clock runs
            until = start + seconds
            sampler = RssSampler(server, start, args.sample)
            sampler.start()
            try:
                results = run_loaders(server, {"doctors": doctors, "auditor": auditor, "xff": xff}, args, start,
                                      until)
            finally:
                sampler.halt.set()
                sampler.join()
            alive = server.alive()
            cpu = server.cpu_seconds()
            if not alive:
                print(f"server log tail:\n{server.log_tail()}", file=sys.stderr)
    except (ServerError, OSError, subprocess.SubprocessError, ValueError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    finally:
        drop_pg_schema(schema)
    return report_and_verdict(report, args, results, sampler.series, windows, alive=alive, cpu=cpu,
                              rate_note=rate_note, xff=xff)


def report_and_verdict(report: dict, args: argparse.Namespace, results: list, series: list, windows: int, *,
                       alive: bool, cpu: float, rate_note: str, xff: bool) -> int:
    samples = [s for r in results for s in r["samples"]]
    errors: dict[str, int] = {}
    examples: dict[str, str] = {}
    counts: dict[str, int] = {}
    for r in results:
        for key, n in r["errors"].items():
            errors[key] = errors.get(key, 0) + n
        examples.update(r["examples"])
        for key, n in r["counts"].items():
            counts[key] = counts.get(key, 0) + n
    if not alive:
        errors["server died"] = 1
    total_errors = sum(errors.values())
    table = latency_table(samples, windows, args.window)
    print(f"\n{len(samples)} requests, {counts.get('patients', 0)} patients registered, {counts.get('cycles', 0)} "
          f"full cycles ({counts.get('uploads_pdf', 0)} PDF and {counts.get('uploads_png', 0)} PNG uploads); "
          f"server CPU {cpu:.0f} s; loader CPU {sum(r['client_cpu_s'] for r in results):.0f} s "
          f"({sum(r['client_cpu_s'] for r in results) * 1e6 / max(1, len(samples)):.0f} µs/request)")
    if table:
        print_table(table, windows, args.window)
    print(f"\nerrors: {total_errors}")
    for key, n in sorted(errors.items()):
        hint = f"  (problem type {examples[key]})" if examples.get(key) else ""
        print(f"  {key}: {n}{hint}")

    p99 = [w["p99_ms"] for w in table["all"]["windows"]] if table else []
    ratio = p99_ratio(table["all"]["windows"]) if table else None
    warmup = args.warmup if args.warmup is not None else max(args.window, min(KEY_CACHE_AGE, args.minutes * 30))
    first = rss_floor(series, args.window, args.settle)
    base = rss_floor(series, warmup, args.settle)
    end = rss_floor(series, args.minutes * 60, args.settle)
    growth = (end - base) / base if base and end and windows >= 2 else None
    first_growth = (end - first) / first if first and end and windows >= 2 else None
    print(f"\nserver RSS in MiB every {args.sample:g} s: all processes (each by pid)")
    for t, sizes in series:
        parts = " ".join(f"{pid}:{size / 2**20:.0f}" for pid, size in sorted(sizes.items()))
        print(f"  {t:7.1f} s  {sum(sizes.values()) / 2**20:7.1f}  ({parts})")

    verdicts = {"errors": "PASS" if total_errors == 0 else "FAIL",
                "p99": "n/a" if ratio is None else "PASS" if ratio <= P99_GROWTH_MAX else "FAIL",
                "rss": "n/a" if growth is None else "PASS" if growth <= RSS_GROWTH_MAX else "FAIL"}
    print(f"\nrate limits: {rate_note}")
    print(f"target 0 errors: {total_errors} — {verdicts['errors']}")
    if ratio is None:
        print("target p99 last window <= 1.5 x second: n/a (needs 3 windows: a longer run, or a shorter --window)")
    else:
        print(f"target p99 last window <= {P99_GROWTH_MAX} x second: {p99[-1]:.1f} ms / {p99[1]:.1f} ms = "
              f"{ratio:.2f} — {verdicts['p99']}")
    if growth is None or base is None or end is None:
        print("target RSS growth <= 10 % after warm-up: n/a (needs 2 windows)")
    else:
        print(f"target RSS growth <= {RSS_GROWTH_MAX:.0%} after warm-up: floor {base / 2**20:.1f} MiB at "
              f"{warmup:g} s -> {end / 2**20:.1f} MiB at the end = {growth:+.1%} — {verdicts['rss']} "
              f"(after the first window, {args.window:g} s: {first_growth:+.1%})")
    print(f"load average after: {loadavg()}")
    report.update(errors=errors, error_examples=examples, total_errors=total_errors, counts=counts, latency=table,
                  p99_ratio=ratio, rss_base_bytes=base, rss_end_bytes=end, rss_growth=growth, rss_warmup_s=warmup,
                  rss_growth_after_first_window=first_growth,
                  rss_series=[[t, sizes] for t, sizes in series], verdicts=verdicts, server_alive=alive,
                  server_cpu_s=cpu, xff=xff, rate_limits=rate_note, loadavg_after=list(os.getloadavg()),
                  finished=dt.datetime.now(dt.UTC).isoformat())
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    print("RESULT_JSON: " + json.dumps({"total_errors": total_errors, "requests": len(samples),
                                        "p99_ratio": ratio, "rss_growth": growth, "verdicts": verdicts,
                                        "overall": table.get("all", {}).get("overall"), "xff": xff,
                                        "operations": {op: row["overall"]["n"] for op, row in table.items()}}))
    return 1 if total_errors else 0


if __name__ == "__main__":
    sys.exit(main())
