"""Interleaved A/B load rounds against real servers, and their medians: the shape every same-run HTTP ratio uses.

Each round runs the closed-loop loader (bench/loadgen.py, its own process) once per case, alternating the order
between rounds so neither side always runs on a warmer or cooler machine. The ratio is subject/baseline per round
and of the medians. Nothing here decides a verdict; callers compare against their own target.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable

import loadgen
from _server import ServerError

STAT_KEYS = ("rps", "p50_ms", "p99_ms", "server_cpu_us_per_request")


def add_round_arguments(parser) -> None:
    """--seconds, --rounds, --connections, --warmup: the knobs of `run_rounds`, the same in every A/B bench."""
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent keep-alive connections (default 64)")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each run (default 0.5)")


def fmt_run(name: str, run: dict, width: int = 8) -> str:
    p50 = run["p50_ms"] if run["p50_ms"] is not None else float("nan")
    p99 = run["p99_ms"] if run["p99_ms"] is not None else float("nan")
    cpu = run.get("server_cpu_us_per_request")
    cpu_s = f"{cpu:,.0f} µs" if cpu is not None else "n/a"
    err = f"  ERRORS {run['errors']} {run['error_kinds']}" if run["errors"] else ""
    return (f"{name:{width}s} {run['rps']:>9,.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
            f"server CPU/req {cpu_s}  client CPU/req {run['client_cpu_us_per_request'] or 0:,.0f} µs{err}")


def run_rounds(cases: dict[str, tuple], *, baseline: str, subject: str, rounds: int, connections: int,
               seconds: float, warmup: float, print_fn: Callable[[str], None] = print) -> list[dict]:
    """`cases[name] = (server, path, header_lines)`; returns one dict per round with both runs and the ratio."""
    results: list[dict] = []
    for index in range(rounds):
        order = [baseline, subject] if index % 2 == 0 else [subject, baseline]
        result: dict = {"round": index + 1}
        for name in order:
            server, path, headers = cases[name]
            result[name] = loadgen.run_subprocess(server.port, path, headers=headers, connections=connections,
                                                  seconds=seconds, warmup=warmup, cpu_pid=server.pid)
            if not server.alive():
                raise ServerError(f"the server died during the {name} run:\n{server.log_tail()}")
        result["ratio"] = result[subject]["rps"] / result[baseline]["rps"] if result[baseline]["rps"] else 0.0
        result["loadavg"] = list(os.getloadavg())
        results.append(result)
        print_fn(f"round {index + 1}/{rounds}  (load {result['loadavg'][0]:.2f})")
        for name in (baseline, subject):
            print_fn("  " + fmt_run(name, result[name]))
        print_fn(f"  ratio {subject}/{baseline} {result['ratio']:.3f}")
    return results


def summarize(rounds: list[dict], names: tuple[str, ...]) -> dict:
    """Medians over rounds per case, the per-round req/s and the failed-request count."""
    def med(name: str, key: str) -> float:
        values = [r[name][key] for r in rounds if r[name][key] is not None]
        return statistics.median(values) if values else float("nan")

    summary = {name: {key: med(name, key) for key in STAT_KEYS} for name in names}
    for name in names:
        summary[name]["rps_per_round"] = [r[name]["rps"] for r in rounds]
        summary[name]["errors"] = sum(r[name]["errors"] for r in rounds)
    return summary


def print_summary(summary: dict, names: tuple[str, ...], print_fn: Callable[[str], None] = print) -> None:
    for name in names:
        s = summary[name]
        per_round = ", ".join(f"{v:,.0f}" for v in s["rps_per_round"])
        print_fn(f"  {name:8s} {s['rps']:>9,.0f} req/s  [{per_round}]  p50 {s['p50_ms']:.2f} ms  "
                 f"p99 {s['p99_ms']:.2f} ms  server CPU/req {s['server_cpu_us_per_request']:,.0f} µs  "
                 f"errors {s['errors']}")
