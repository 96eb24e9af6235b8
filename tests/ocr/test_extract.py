"""Whole path through extract(): generated sheets (images, scanned and digital PDFs), engine offline, purity."""
from __future__ import annotations

import ast
import io
import json
import socket
from pathlib import Path

import pytest

from ocr import LabReport, extract

from .sheetgen import ROWS, digital_pdf, image_sheet, scanned_pdf

OCR_DIR = Path(__file__).resolve().parents[2] / "ocr"


def _by_code(rep: LabReport) -> dict:
    return {r.std_code: r for r in rep.results}


def _check_rows(rep: LabReport, rows=ROWS, *, check_flags=True):
    got = _by_code(rep)
    missing = [r[0] for r in rows if r[0] not in got]
    assert not missing, (missing, [(r.name, r.code, r.value) for r in rep.results])
    for code, _name, val, unit, ref, lo, hi, flag in rows:
        r = got[code]
        assert r.value == val, (code, r.value, val)
        assert r.value_num == float(val)
        assert r.unit == unit, (code, r.unit, unit)
        assert (r.ref_low, r.ref_high) == (lo, hi), (code, r.ref_low, r.ref_high, ref)
        if check_flags:
            assert r.flag == flag, (code, r.flag, flag)
        assert r.bbox and len(r.bbox) == 4
        assert r.page == 1


# ----------------------------------------------------------------------------- born-digital PDF (no OCR)
def test_digital_pdf_text_layer():
    s = digital_pdf()
    rep = extract(s.data)
    assert rep.source["pages"][0]["kind"] == "pdf_text"
    _check_rows(rep, s.rows)
    for k, v in s.header.items():
        want = v.replace("床", "")
        assert rep.header[k] == want, (k, rep.header[k], want)
    assert "engine" not in rep.provenance  # no OCR was needed
    d = json.loads(rep.to_json())
    assert set(d) >= {"header", "results", "needs_review", "warnings", "provenance"}
    r0 = d["results"][0]
    assert set(r0) >= {"name", "code", "value", "unit", "ref_low", "ref_high", "ref_text", "flag", "confidence",
                       "bbox", "page", "needs_review"}


def test_flag_disagreement_is_flagged_for_review():
    rows = [list(r) for r in ROWS]
    rows[1][7] = "H"  # RBC 4.52 printed as high but inside 3.8-5.1
    s = digital_pdf([tuple(r) for r in rows])
    rep = extract(s.data)
    rbc = _by_code(rep)["RBC"]
    assert rbc.flag_printed == "H" and rbc.flag_derived is None
    assert rbc.needs_review
    assert any("RBC" in w or "红细胞" in w for w in rep.warnings)


# ----------------------------------------------------------------------------- OCR paths
@pytest.mark.slow
def test_png_sheet():
    s = image_sheet()
    rep = extract(s.data)
    _check_rows(rep, s.rows)
    prov = rep.provenance
    assert prov["engine"].startswith("rapidocr")
    assert all(len(m["sha256"]) == 64 for m in prov["models"])
    assert {m["role"] for m in prov["models"]} == {"det", "rec", "cls"}


@pytest.mark.slow
def test_rotated_two_table_sheet_with_glued_flags():
    s = image_sheet(rotate=2.0, two_tables=True, flags_glued=True, width=1400)
    rep = extract(s.data)
    _check_rows(rep, s.rows)
    assert abs(rep.source["pages"][0]["deskew_deg"]) > 1.0


@pytest.mark.slow
def test_jpeg_with_exif_orientation():
    from PIL import Image

    s = image_sheet(fmt="PNG")
    im = Image.open(io.BytesIO(s.data)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    rep = extract(buf.getvalue())
    _check_rows(rep, s.rows)


@pytest.mark.slow
def test_scanned_pdf_is_ocrd():
    s = image_sheet()
    rep = extract(scanned_pdf(s))
    assert rep.source["pages"][0]["kind"] == "pdf_image"
    _check_rows(rep, s.rows)


@pytest.mark.slow
def test_engine_runs_with_network_blocked(monkeypatch):
    from ocr import engine as eng_mod

    def no_network(*a, **k):
        raise OSError("network blocked by test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    eng_mod.set_engine(None)  # force a fresh load (model files opened, sessions built) with no network
    try:
        e = eng_mod.RapidOCREngine()  # with openvino installed, detection runs there: it must stay offline too
        eng_mod.set_engine(e)
        s = image_sheet(rows=ROWS[:3])
        rep = extract(s.data)
        _check_rows(rep, s.rows)
    finally:
        eng_mod.set_engine(None)


# ----------------------------------------------------------------------------- purity
PROJECT_PACKAGES = {"vault", "api", "kms", "audit", "consent"}


def test_ocr_imports_no_project_package():
    for f in OCR_DIR.rglob("*.py"):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in PROJECT_PACKAGES, f"{f.name} imports {n}"


def test_importing_ocr_loads_no_project_package():
    import subprocess
    import sys

    code = ("import sys, ocr, ocr.pipeline, ocr.cli; "
            f"bad = [m for m in sys.modules if m.split('.')[0] in {PROJECT_PACKAGES!r}]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=OCR_DIR.parent)
    assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------------------------------- layout variants (text layer, fast)
from .sheetgen import QUAL_ROWS  # noqa: E402


@pytest.mark.parametrize("kw", [
    dict(columns=("seq", "code", "name", "result", "unit", "ref"), glued_flags=True),
    dict(columns=("name", "result", "flag", "unit", "ref"), two_tables=True),
    dict(columns=("seq", "name", "method", "result", "flag", "ref", "unit")),
    dict(columns=("name", "code", "result", "flag", "unit", "ref"), spaced_header=True),
    dict(columns=("seq", "name", "result", "ref", "unit"), name_with_code=False, glued_flags=True),
], ids=["code-first-glued", "two-tables", "extra-method-column", "spaced-header", "no-code-glued"])
def test_layout_variants(kw):
    s = digital_pdf(**kw)
    rep = extract(s.data)
    _check_rows(rep, s.rows)
    assert [r.std_code for r in rep.results] == [r[0] for r in s.rows]  # reading order: left table first
    if kw.get("two_tables"):
        assert rep.results[0].bbox[0] < rep.results[-1].bbox[0]


def test_qualitative_rows():
    s = digital_pdf(QUAL_ROWS, columns=("name", "result", "flag", "ref", "unit"))
    rep = extract(s.data)
    got = _by_code(rep)
    from ocr.parse import qual_level

    for code, _n, val, _unit, ref, lo, hi, flag in QUAL_ROWS:
        r = got[code]
        assert r.value == val and r.unit is None, (code, r.value, r.unit)
        assert r.flag == flag, (code, r.flag)
        assert (r.ref_low, r.ref_high) == (lo, hi)
        assert r.ref_text == ref
    assert got["PRO"].qual_level == qual_level("2+") == "2+"
