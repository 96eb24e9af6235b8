"""A/B of the record read over HTTP with and without INT-1's sealed category, in one run (issue 14 item 9).

    python bench/bench_integrity_http.py [--base COMMIT] [--seconds 5] [--rounds 5] [--connections 64] [--quick]

Starts two real servers (bench/_server.py) side by side on fresh data directories: one from `--base` (default: the
commit before the integrity work, exported with `git archive` to a temp dir) and one from this tree; in each a
patient uploads one small record; then R interleaved rounds (order alternating) of the closed-loop loader read
`GET /v1/records/{id}` on both. The new read opens one more sealed field (the category) before the gate decides.
Prints req/s, p50/p99, server CPU per request per side and the ratio new/base (target >= 0.95: the check costs
<= 5 %). The grant path's cost (the tag check where the engine turns rows into policies) is measured by
bench_authz.py's A/B.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _server
from _rounds import add_round_arguments, print_summary, run_rounds, summarize
from _server import ServerError, VaultServer, loadavg

BASE = "348c980"  # main before the integrity work
TARGET = 0.95


@contextlib.contextmanager
def _root(path: Path):
    """Start a server from another source tree (VaultServer runs `python -m vault.cli` in REPO_ROOT)."""
    saved = _server.REPO_ROOT
    _server.REPO_ROOT = path
    try:
        yield
    finally:
        _server.REPO_ROOT = saved


class _TreeServer(VaultServer):
    def __init__(self, root: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = root

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env["PYTHONPATH"] = str(self.root)
        return env

    def start(self) -> None:
        with _root(self.root):
            super().start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_round_arguments(parser)
    parser.add_argument("--base", default=BASE)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.connections, args.warmup = 1.0, 1, 8, 0.3
    here = Path(__file__).resolve().parents[1]
    print(f"bench_integrity_http: base {args.base} vs this tree, {args.rounds} round(s) x {args.seconds:g} s, "
          f"{args.connections} connections; load average before: {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="hv-base-") as tmp:
        base_root = Path(tmp)
        archive = subprocess.run(["git", "-C", str(here), "archive", args.base], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(base_root)], input=archive.stdout, check=True)
        try:
            with _TreeServer(base_root) as base, _TreeServer(here) as new:
                cases = {}
                for name, server in (("base", base), ("new", new)):
                    auth = server.register_and_login()
                    record = server.upload_small(auth)
                    path = f"/v1/records/{record['record_id']}"
                    status, body = server.request("GET", path, headers=auth)
                    if status != 200:
                        raise ServerError(f"{name}: GET {path} → {status}: {body!r}")
                    cases[name] = (server, path, [f"{k}: {v}" for k, v in auth.items()])
                rounds = run_rounds(cases, baseline="base", subject="new", rounds=args.rounds,
                                    connections=args.connections, seconds=args.seconds, warmup=args.warmup)
        except (ServerError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            return 1
    summary = summarize(rounds, ("base", "new"))
    ratio = summary["new"]["rps"] / summary["base"]["rps"] if summary["base"]["rps"] else 0.0
    print()
    print("summary (medians over rounds)")
    print_summary(summary, ("base", "new"))
    per_round = ", ".join(f"{r['ratio']:.3f}" for r in rounds)
    print(f"  ratio new/base {ratio:.3f} (per round: {per_round})  "
          f"target >= {TARGET:.2f}: {'PASS' if ratio >= TARGET else 'FAIL'}")
    print(f"load average after: {loadavg()}; {os.cpu_count()} CPUs")
    errors = summary["base"]["errors"] + summary["new"]["errors"]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
