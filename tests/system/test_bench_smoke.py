"""Smoke test of the HTTP benches: each runs at --quick size against a real server process and prints its figures.

It guards the benches themselves (they start, talk to the current API, parse, report) and two properties that hold at
any size: an upload does not grow the server's memory by more than 64 MiB, and the bytes come back with the SHA-256
the server reported. Throughput targets are not asserted here (CI machines are shared and noisy). The soak runs its
whole mixed workload for 15 seconds on PostgreSQL with two server processes and must see no unexpected answer; its
latency and memory targets need minutes and are not asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(script: str, timeout: float = 90, env: dict[str, str] | None = None) -> tuple[str, dict]:
    result = subprocess.run([sys.executable, str(BENCH / script), "--quick"], capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL, cwd=BENCH.parent,
                            env={**os.environ, **env} if env else None)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT_JSON: ")]
    assert lines, output[-4000:]
    return result.stdout, json.loads(lines[-1].removeprefix("RESULT_JSON: "))


@pytest.mark.slow
def test_bench_http_quick_reports_both_endpoints_and_the_ratio():
    out, result = _run("bench_http.py")
    assert "ratio records/healthz" in out and "load average" in out
    assert "PASS" in out or "FAIL" in out
    assert result["errors"] == 0
    for name in ("healthz", "records"):
        figures = result["summary"][name]
        assert figures["rps"] > 0 and figures["p50_ms"] > 0 and figures["p99_ms"] >= figures["p50_ms"]
    assert result["ratio"] > 0


@pytest.mark.slow
def test_bench_upload_quick_stays_within_memory_and_round_trips():
    out, result = _run("bench_upload.py")
    assert "peak growth" in out and "MiB/s" in out
    assert result["sha256_ok"] is True and result["size_ok"] is True and result["errors"] == []
    assert result["peak_growth_mib"] <= 64, out
    assert result["download_peak_growth_mib"] <= 64, out
    assert result["upload_mib_s"] > 0 and result["download_mib_s"] > 0


@pytest.mark.slow
@pytest.mark.postgres
def test_bench_soak_quick_runs_every_operation_of_the_mixed_workload_without_an_error():
    from tests.conftest import PG_URL, require_pg

    require_pg()
    out, result = _run("bench_soak.py", timeout=420, env={"HEALTHVAULT_BENCH_PG_URL": PG_URL})
    assert result["total_errors"] == 0, out[-4000:]
    assert "errors: 0" in out and "load average after" in out and "server RSS" in out
    expected = {"notice", "register", "login", "upload", "list", "read", "content", "grant", "shared", "doctor_read",
                "doctor_download", "revoke", "revoked_read", "audit_search"}
    assert expected <= {op for op, n in result["operations"].items() if n > 0}, result["operations"]
    assert result["rss_growth"] is not None and result["verdicts"]["errors"] == "PASS"


def test_bench_edges_substitutions_match_the_tree_exactly(tmp_path):
    """Each text bench_edges.py takes out of tree B is still there as often as it says (a refactor that moves one
    fails here, not as an A/A run that looks like a free check), and a text that is not found stops the bench."""
    sys.path.insert(0, str(BENCH))
    import bench_edges

    assert set(bench_edges.VARIANTS) >= {"edges", "metrics", "console", "none"}
    for variant, edits in bench_edges.VARIANTS.items():
        for relative, old, _new, times in edits:
            assert (BENCH.parent / relative).read_text().count(old) == times, (variant, relative)
    (tmp_path / "vault").mkdir()
    (tmp_path / "vault" / "x.py").write_text("def check():\n    pass\n")
    with pytest.raises(bench_edges.SubstitutionMissing, match="expected 1 occurrence"):
        bench_edges.substitute(tmp_path, [("vault/x.py", "def other():", "", 1)])


@pytest.mark.slow
def test_bench_edges_quick_reports_both_trees_and_the_direct_figures():
    out, result = _run("bench_edges.py", timeout=240)
    assert "B = the copy without the rate limits and the key-state watcher" in out and "load average" in out
    assert result["a_rps"] > 0 and result["b_rps"] > 0 and result["verdict"] in ("PASS", "FAIL")
    assert result["direct"]["A"]["rate_limit_hits_per_read"] == 0  # the read path counts no rate-limit attempt
