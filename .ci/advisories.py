"""Known-vulnerability gate of CI (COMPLIANCE IP-2): pip-audit over the installed environment, waivers reviewed in
.ci/advisory-waivers.toml. Run by .ci/run after the install step: `.venv/bin/python .ci/advisories.py`.

The service: pip-audit's `pypi` service only (PyPI's JSON API, which carries the PyPA advisory database); no other
host is contacted. Severity: that service reports advisory ids, aliases and fixed versions but no severity (nor does
pip-audit's JSON output), so this gate cannot tell high from low: EVERY advisory fails the run unless a waiver names
it. A waiver needs the package, the advisory id (or one of its aliases), a reason, a reviewer and an expiry date; an
expired or incomplete waiver fails the run.

Unreachable service: when pip-audit cannot run, or cannot audit a dependency (PyPI unreachable, or answering "not
found" for published packages, as a blocked mirror does), nothing is proven, and the gate FAILS (fail closed, like
the rest of the vault: a scan that did not happen is not evidence of no advisory). The message says so plainly. A
build environment that cannot reach PyPI by design records that in the waiver file's [unreachable] table — reason,
reviewer, expiry — which turns the failure into a loud warning until it expires.

Exit status: 0 pass, 1 advisories or unverified, 2 the waiver file itself is wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WAIVERS = HERE / "advisory-waivers.toml"
PROJECT = "healthvault"
WAIVER_FIELDS = ("package", "id", "reason", "reviewed_by", "expires")
UNREACHABLE_FIELDS = ("reason", "reviewed_by", "expires")


class WaiverFileError(ValueError):
    pass


@dataclasses.dataclass
class Verdict:
    ok: bool
    failures: list[str]
    warnings: list[str]
    audited: int = 0


def _date(value: Any, where: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    raise WaiverFileError(f"{where}: expires must be a TOML date (e.g. 2027-01-31)")


def load_waivers(text: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """([[waiver]] entries, the [unreachable] table or None); raises WaiverFileError on anything incomplete."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise WaiverFileError(f"not valid TOML: {exc}") from None
    unknown = set(data) - {"waiver", "unreachable"}
    if unknown:
        raise WaiverFileError(f"unknown top-level keys: {sorted(unknown)}")
    waivers = data.get("waiver", [])
    if not isinstance(waivers, list):
        raise WaiverFileError("waiver must be an array of tables ([[waiver]])")
    for n, waiver in enumerate(waivers, 1):
        missing = [f for f in WAIVER_FIELDS if not str(waiver.get(f, "")).strip()]
        if missing:
            raise WaiverFileError(f"waiver {n}: missing {', '.join(missing)}")
        waiver["expires"] = _date(waiver["expires"], f"waiver {n}")
    unreachable = data.get("unreachable")
    if unreachable is not None:
        missing = [f for f in UNREACHABLE_FIELDS if not str(unreachable.get(f, "")).strip()]
        if missing:
            raise WaiverFileError(f"[unreachable]: missing {', '.join(missing)}")
        unreachable["expires"] = _date(unreachable["expires"], "[unreachable]")
    return waivers, unreachable


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def evaluate(report: dict[str, Any] | None, waivers: list[dict[str, Any]], unreachable: dict[str, Any] | None, *,
             today: dt.date, error: str | None = None) -> Verdict:
    """The gate's decision over pip-audit's JSON report (None when pip-audit did not produce one: `error` says
    why)."""
    failures: list[str] = []
    warnings: list[str] = []
    unverified: list[str] = []
    audited = 0
    if report is None:
        unverified.append(error or "pip-audit produced no report")
    else:
        for dep in report.get("dependencies", []):
            name = _norm(dep.get("name", "?"))
            if name == PROJECT:
                continue
            if "skip_reason" in dep:
                unverified.append(f"{name}: {dep['skip_reason']}")
                continue
            audited += 1
            for vuln in dep.get("vulns", []):
                ids = {vuln.get("id", "?"), *vuln.get("aliases", [])}
                match = next((w for w in waivers if _norm(w["package"]) == name and w["id"] in ids), None)
                fixed = vuln.get("fix_versions") or "-"
                label = f"{name} {dep.get('version', '?')}: {vuln.get('id')} (fixed in {fixed})"
                if match is None:
                    failures.append(f"advisory not waived: {label}")
                elif match["expires"] < today:
                    failures.append(f"waiver expired on {match['expires']}: {label}")
                else:
                    warnings.append(f"waived until {match['expires']} ({match['reason']}): {label}")
    if unverified:
        head = (f"the advisory scan could not verify {len(unverified)} dependency(ies) (PyPI's advisory service "
                f"unreachable or not answering): {unverified[0]}")
        if unreachable is not None and unreachable["expires"] >= today:
            warnings.append(f"UNVERIFIED, accepted until {unreachable['expires']} by {unreachable['reviewed_by']} "
                            f"({unreachable['reason']}): {head}")
        elif unreachable is not None:
            failures.append(f"{head}; the [unreachable] acceptance expired on {unreachable['expires']}")
        else:
            failures.append(f"{head}; IP-2 is not proven: retry when PyPI is reachable, or record a reviewed "
                            "[unreachable] acceptance with an expiry in .ci/advisory-waivers.toml")
    return Verdict(not failures, failures, warnings, audited)


def run_pip_audit(command: list[str], timeout: float = 600) -> tuple[dict[str, Any] | None, str | None]:
    """pip-audit's JSON report, or (None, why it could not be had)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
    except FileNotFoundError:
        return None, f"{command[0]} not found (is pip-audit in the dev extra installed?)"
    except subprocess.TimeoutExpired:
        return None, f"pip-audit did not finish in {timeout:.0f} s"
    try:
        report = json.loads(done.stdout)
    except ValueError:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"pip-audit failed (exit {done.returncode}): {last[:300]}"
    if not isinstance(report, dict):
        return None, "pip-audit's report is not a JSON object"
    return report, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waivers", default=str(WAIVERS))
    parser.add_argument("--report", help="a pip-audit JSON report to judge instead of running pip-audit")
    parser.add_argument("--today", help="YYYY-MM-DD (tests)")
    args = parser.parse_args(argv)
    today = dt.date.fromisoformat(args.today) if args.today else dt.datetime.now(dt.UTC).date()
    try:
        path = Path(args.waivers)
        waivers, unreachable = load_waivers(path.read_text(encoding="utf-8") if path.exists() else "")
    except WaiverFileError as exc:
        print(f"advisories: {args.waivers}: {exc}", file=sys.stderr)
        return 2
    if args.report:
        report, error = json.loads(Path(args.report).read_text(encoding="utf-8")), None
    else:
        report, error = run_pip_audit([sys.executable, "-m", "pip_audit", "--vulnerability-service", "pypi",
                                       "--local", "--skip-editable", "--format", "json", "--progress-spinner", "off",
                                       "--timeout", "30"])
    verdict = evaluate(report, waivers, unreachable, today=today, error=error)
    for line in verdict.warnings:
        print(f"advisories: WARNING: {line}", file=sys.stderr)
    for line in verdict.failures:
        print(f"advisories: FAIL: {line}", file=sys.stderr)
    outcome = "pass" if verdict.ok else "FAIL"
    print(f"advisories: {verdict.audited} dependencies audited against PyPI; {outcome} "
          f"({len(verdict.failures)} failure(s), {len(verdict.warnings)} warning(s))")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
