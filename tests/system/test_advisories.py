"""The known-vulnerability gate of CI (.ci/advisories.py, COMPLIANCE IP-2), judged on synthetic pip-audit reports:
an advisory fails unless a complete, unexpired waiver names it; a scan that could not run fails unless a reviewed,
unexpired [unreachable] acceptance says why. (The real pip-audit run is .ci/run's, not the suite's: it needs PyPI.)"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TODAY = dt.date(2026, 12, 7)


@pytest.fixture(scope="module")
def gate():
    spec = importlib.util.spec_from_file_location("ci_advisories", ROOT / ".ci" / "advisories.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ci_advisories"] = module
    spec.loader.exec_module(module)
    return module


def _report(*vulns: dict, skipped: tuple[str, ...] = ()) -> dict:
    deps = [{"name": "healthvault", "skip_reason": "editable"},
            {"name": "Jinja2", "version": "3.1.0", "vulns": list(vulns)},
            {"name": "anyio", "version": "4.0.0", "vulns": []}]
    deps += [{"name": name, "skip_reason": f"Dependency not found on PyPI and could not be audited: {name}"}
             for name in skipped]
    return {"dependencies": deps, "fixes": []}


ADVISORY = {"id": "PYSEC-2026-77", "aliases": ["GHSA-xxxx-yyyy-zzzz", "CVE-2026-1234"], "fix_versions": ["3.1.9"],
            "description": "sandbox escape"}


def _waiver(**overrides) -> str:
    fields = {"package": '"jinja2"', "id": '"GHSA-xxxx-yyyy-zzzz"', "reason": '"templates are ours only"',
              "reviewed_by": '"sec admin"', "expires": "2026-12-31", **overrides}
    return "[[waiver]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items() if v is not None)


def test_a_clean_report_passes_and_counts_what_was_audited(gate):
    verdict = gate.evaluate(_report(), [], None, today=TODAY)
    assert verdict.ok and verdict.audited == 2 and verdict.failures == []


def test_an_advisory_without_a_waiver_fails_whatever_its_severity(gate):
    verdict = gate.evaluate(_report(ADVISORY), [], None, today=TODAY)
    assert not verdict.ok and "PYSEC-2026-77" in verdict.failures[0] and "3.1.9" in verdict.failures[0]


def test_a_waiver_by_alias_passes_with_a_warning_until_it_expires(gate):
    waivers, unreachable = gate.load_waivers(_waiver())
    verdict = gate.evaluate(_report(ADVISORY), waivers, unreachable, today=TODAY)
    assert verdict.ok and "waived until 2026-12-31" in verdict.warnings[0]
    expired = gate.evaluate(_report(ADVISORY), waivers, unreachable, today=dt.date(2027, 1, 1))
    assert not expired.ok and "expired" in expired.failures[0]
    other = gate.load_waivers(_waiver(package='"anyio"'))[0]
    assert not gate.evaluate(_report(ADVISORY), other, None, today=TODAY).ok  # a waiver is for one package only


@pytest.mark.parametrize("field", ["reason", "reviewed_by", "expires", "id", "package"])
def test_an_incomplete_waiver_is_refused(gate, field):
    with pytest.raises(gate.WaiverFileError, match=field):
        gate.load_waivers(_waiver(**{field: None}))
    with pytest.raises(gate.WaiverFileError):
        gate.load_waivers(_waiver(reason='"  "'))
    with pytest.raises(gate.WaiverFileError, match="TOML date"):
        gate.load_waivers(_waiver(expires='"soon"'))


def test_a_scan_that_could_not_run_fails_closed_unless_an_unexpired_acceptance_says_why(gate):
    unverified = _report(skipped=("requests",))
    verdict = gate.evaluate(unverified, [], None, today=TODAY)
    assert not verdict.ok and "not proven" in verdict.failures[0] and "requests" in verdict.failures[0]
    offline = gate.evaluate(None, [], None, today=TODAY, error="pip-audit failed (exit 1): ConnectionError")
    assert not offline.ok and "ConnectionError" in offline.failures[0]
    accepted = gate.load_waivers('[unreachable]\nreason = "air-gapped build"\nreviewed_by = "ops"\n'
                                 'expires = 2026-12-10\n')[1]
    assert gate.evaluate(unverified, [], accepted, today=TODAY).ok
    assert "UNVERIFIED" in gate.evaluate(unverified, [], accepted, today=TODAY).warnings[0]
    late = gate.evaluate(unverified, [], accepted, today=dt.date(2026, 12, 11))
    assert not late.ok and "expired" in late.failures[0]
    with pytest.raises(gate.WaiverFileError, match="reviewed_by"):
        gate.load_waivers('[unreachable]\nreason = "x"\nexpires = 2026-12-10\n')


def test_the_command_line_exit_codes(gate, tmp_path, capsys):
    report, waivers = tmp_path / "report.json", tmp_path / "waivers.toml"
    report.write_text(json.dumps(_report(ADVISORY)))
    waivers.write_text("")
    assert gate.main(["--report", str(report), "--waivers", str(waivers), "--today", "2026-12-07"]) == 1
    waivers.write_text(_waiver())
    assert gate.main(["--report", str(report), "--waivers", str(waivers), "--today", "2026-12-07"]) == 0
    waivers.write_text("[[waiver]]\npackage = 'jinja2'\n")
    assert gate.main(["--report", str(report), "--waivers", str(waivers), "--today", "2026-12-07"]) == 2
    assert "missing" in capsys.readouterr().err


def test_a_missing_pip_audit_is_a_clear_failure(gate):
    report, error = gate.run_pip_audit(["/nonexistent/pip-audit"])
    assert report is None and "not found" in error


def test_the_repository_waiver_file_is_valid_and_ci_runs_the_gate(gate):
    gate.load_waivers((ROOT / ".ci" / "advisory-waivers.toml").read_text(encoding="utf-8"))
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ".venv/bin/python .ci/advisories.py" in run
    assert run.index(".ci/advisories.py\n") < run.index("ruff check .\n")  # after the install, before the tests
