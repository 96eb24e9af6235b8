"""Dev-set evaluation through the exact CLI and scorer (slow; skipped when the dataset is absent)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEV = Path(os.environ.get("LAB_SHEETS_DEV", ROOT.parent / "shared" / "datasets" / "lab-sheets-dev"))


@pytest.mark.slow
def test_devset_through_cli(tmp_path):
    if not (DEV / "score.py").is_file():
        pytest.skip(f"lab-sheets dev set not found at {DEV} (set LAB_SHEETS_DEV to its directory)")
    files = sorted(p for p in DEV.iterdir() if p.suffix in (".png", ".jpg", ".pdf"))
    if os.environ.get("OCR_DEVSET_ALL") != "1":
        # CI-sized: the born-digital PDFs plus one page per source kind keep this under a minute
        man = {p.stem: json.loads(p.with_suffix(".json").read_text(encoding="utf-8")) for p in files}
        keep, seen = [], set()
        for p in files:
            k = man[p.stem].get("condition")
            if k == "digital_pdf" or k not in seen:
                keep.append(p)
                seen.add(k)
        files = [p for p in keep if man[p.stem].get("condition") in ("digital_pdf", "clean", "photo")]
    r = subprocess.run([sys.executable, "-m", "ocr", *map(str, files), "--json"], capture_output=True, text=True,
                       cwd=ROOT, timeout=600, check=False)
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    assert len(lines) == len(files), r.stderr[-2000:]
    for p, d in zip(files, lines, strict=False):
        assert "error" not in d, d
        (tmp_path / f"{p.stem}.json").write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")
    # score only the files we ran: a truth dir with just those
    truth = tmp_path / "truth"
    truth.mkdir()
    for p in files:
        (truth / f"{p.stem}.json").write_text(p.with_suffix(".json").read_text(encoding="utf-8"), encoding="utf-8")
    s = subprocess.run([sys.executable, str(DEV / "score.py"), str(tmp_path), str(truth), "--json",
                        str(tmp_path / "score.json")], capture_output=True, text=True, check=False)
    assert s.returncode == 0, s.stderr
    overall = json.loads((tmp_path / "score.json").read_text())["overall"]
    print(s.stdout)
    assert overall["field_f1"] >= 0.95, s.stdout
    assert overall["value_acc"] >= 0.97, s.stdout


DEV2 = Path(os.environ.get("LAB_SHEETS_DEV2", ROOT.parent / "shared" / "datasets" / "lab-sheets-dev2"))


@pytest.mark.slow
def test_devset2_screenshots_and_hard_paper_through_cli(tmp_path):
    """lab-sheets-dev2 (app screenshots, hard phone photos, A5 two-table sheets) through the CLI and its scorer.
    CI-sized: the smallest sample of each condition; OCR_DEVSET_ALL=1 runs every sample."""
    if not (DEV2 / "score.py").is_file():
        pytest.skip(f"lab-sheets-dev2 not found at {DEV2} (set LAB_SHEETS_DEV2 to its directory)")
    files = sorted(p for p in DEV2.iterdir() if p.suffix in (".png", ".jpg", ".pdf"))
    if os.environ.get("OCR_DEVSET_ALL") != "1":
        man = {p.stem: json.loads(p.with_suffix(".json").read_text(encoding="utf-8")) for p in files}
        smallest: dict[str, Path] = {}
        for p in files:
            k = man[p.stem].get("condition")
            if k not in smallest or p.stat().st_size < smallest[k].stat().st_size:
                smallest[k] = p
        files = sorted(smallest.values())
    r = subprocess.run([sys.executable, "-m", "ocr", *map(str, files), "--json"], capture_output=True, text=True,
                       cwd=ROOT, timeout=900, check=False)
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    assert len(lines) == len(files), r.stderr[-2000:]
    truth = tmp_path / "truth"
    truth.mkdir()
    for p, d in zip(files, lines, strict=False):
        assert "error" not in d, d
        (tmp_path / f"{p.stem}.json").write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")
        (truth / f"{p.stem}.json").write_text(p.with_suffix(".json").read_text(encoding="utf-8"), encoding="utf-8")
    s = subprocess.run([sys.executable, str(DEV2 / "score.py"), str(tmp_path), str(truth), "--json",
                        str(tmp_path / "score.json")], capture_output=True, text=True, check=False)
    assert s.returncode == 0, s.stderr
    overall = json.loads((tmp_path / "score.json").read_text())["overall"]
    print(s.stdout)
    assert overall["field_f1"] >= 0.95, s.stdout
