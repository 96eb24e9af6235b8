"""Smoke test of bench/bench_audit_verify.py at --quick size: it runs, verifies its own export and reports figures.

Targets are not asserted here (machines running the tests are shared and noisy); the bench prints PASS/FAIL.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_audit_verify_quick():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_audit_verify.py"), "--quick"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT_JSON: "))
    figures = json.loads(line.removeprefix("RESULT_JSON: "))
    assert figures["verify"]["events"] > 0 and figures["verify"]["events_per_cpu_s"] > 0
    inclusion = figures["inclusion"]
    assert inclusion["samples"] == 100 and 0 < inclusion["p50_ms"] <= inclusion["max_ms"]
