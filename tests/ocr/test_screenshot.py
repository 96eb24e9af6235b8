"""Phone screenshots: detection, full-resolution tiles merged without duplicates, phone chrome, result cards,
colour as flag evidence, and the whole extract() path on generated screenshot fixtures (sheetgen.py)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from ocr import extract
from ocr.cards import card_rows
from ocr.chrome import drop_chrome
from ocr.colour import glyph_colour
from ocr.engine import TextBox
from ocr.inputs import Token
from ocr.pipeline import finalize_row
from ocr.screenshot import det_side_for, is_screenshot, read_tiled, recognize_tiled, tile_spans

from .sheetgen import LONG_ROWS, ROWS, cjk_font_path, image_sheet, long_screenshot, photo_of, screenshot


def _bgr(data: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


# ----------------------------------------------------------------------------- detection and tiles
def test_screenshot_detected_and_paper_not():
    assert is_screenshot(_bgr(screenshot(ROWS[:6]).data))
    assert is_screenshot(_bgr(long_screenshot().data))
    assert is_screenshot(_bgr(screenshot(ROWS[:6], dark=True, fmt="JPEG").data))
    sheet = image_sheet()
    assert not is_screenshot(_bgr(sheet.data))           # an A4 page render: flat, but not phone-shaped
    assert not is_screenshot(_bgr(photo_of(sheet)))      # a camera photo: not flat


@pytest.mark.parametrize("h,w", [(1600, 720), (2796, 1290), (7613, 1200), (6554, 1200), (1500, 1500)])
def test_tiles_cover_the_image_and_own_disjoint_bands(h, w):
    spans = tile_spans(h, w)
    assert spans[0][0] == 0 and spans[-1][1] == h
    owned = [(o0, o1) for _, _, o0, o1 in spans]
    assert owned[0][0] == 0 and owned[-1][1] == h
    assert all(a[1] == b[0] for a, b in itertools.pairwise(owned))       # a partition: each line counted once
    for y0, y1, o0, o1 in spans:
        assert y1 - y0 <= 2000                                          # never above the engine's own limit
        assert o0 - y0 >= 100 or y0 == 0                                # a line whose centre is owned is whole
        assert y1 - o1 >= 100 or y1 == h


def test_detection_copy_is_screen_wide_never_enlarged():
    assert det_side_for(1200, 1800) == 1080          # a 1200 px screen detected 720 px wide
    assert det_side_for(720, 1080) == 1080           # a 720 px screen as it is
    assert det_side_for(600, 900) == 900             # never enlarged


def test_tiled_recognition_keeps_every_line_once():
    h, w = 7000, 1080
    lines = [(y, f"line{k}") for k, y in enumerate(range(40, h - 40, 57))]   # 40 px tall lines every 57 px
    img = np.zeros((h, w, 3), np.uint8)
    calls = []

    def fake_recognize(tile: np.ndarray) -> list[TextBox]:
        # the fake engine sees only the tile: where does it sit in the image? (its first row holds the offset)
        y0 = int(tile[0, 0, 0]) * 256 + int(tile[0, 0, 1])
        calls.append((y0, tile.shape[0]))
        out = []
        for y, text in lines:
            top, bottom = y - 20 - y0, y + 20 - y0
            if 0 <= top and bottom <= tile.shape[0]:
                out.append(TextBox([(10, top), (300, top), (300, bottom), (10, bottom)], text, 0.99))
        return out

    for y in range(h):
        img[y, 0, 0], img[y, 0, 1] = y // 256, y % 256
    boxes = recognize_tiled(img, fake_recognize)
    assert len(calls) >= 3
    assert sorted(b.text for b in boxes) == sorted(t for _, t in lines)
    for b in boxes:
        cy = sum(p[1] for p in b.quad) / 4
        assert abs(cy - {t: y for y, t in lines}[b.text]) < 1e-6

    # detection first, then one recognition call: a line in a tile overlap is read once, a dropped box never
    read: list[list] = []

    def fake_detect(tile: np.ndarray, det_side: int) -> list[list[tuple[float, float]]]:
        assert det_side == det_side_for(w, tile.shape[0])
        return [b.quad for b in fake_recognize(tile)]

    def fake_read(image: np.ndarray, quads: list) -> list[TextBox]:
        read.append(quads)
        by_y = dict(lines)
        return [TextBox(q, by_y[round(sum(p[1] for p in q) / 4)], 0.99) for q in quads]

    calls.clear()
    dropped = {y for y, _ in lines[::5]}
    boxes = read_tiled(img, fake_detect, fake_read, keep=lambda q: round(sum(p[1] for p in q) / 4) not in dropped)
    assert len(calls) >= 3 and len(read) == 1                 # every tile detected, one recognition call
    assert sorted(b.text for b in boxes) == sorted(t for y, t in lines if y not in dropped)
    assert len(read[0]) == len(lines) - len(dropped)           # neither overlap duplicates nor dropped boxes read


# ----------------------------------------------------------------------------- chrome, colour, cards
def _tok(text: str, x0: float, y0: float, x1: float, y1: float, colour: str | None = None) -> Token:
    return Token(text, x0, y0, x1, y1, 0.99, 0.0, colour)


def test_chrome_dropped_report_kept():
    w, h = 1080, 2340
    toks = [_tok("9:41", 60, 40, 160, 80), _tok("5G 87%", 850, 40, 1000, 80),
            _tok("三刃", 700, 45, 790, 75),                     # signal and Wi-Fi icons read as CJK text
            _tok("报告详情", 460, 150, 620, 200), _tok("<", 30, 150, 60, 200),
            _tok("血常规全套", 60, 330, 300, 390),                # card title: below the bars, left aligned
            _tok("白细胞计数", 60, 900, 260, 950), _tok("11.32 ↑", 880, 900, 1020, 950),
            _tok("首页", 150, 2250, 230, 2290), _tok("我的", 850, 2250, 930, 2290)]
    kept = [t.text for t in drop_chrome(toks, w, h)]
    assert kept == ["血常规全套", "白细胞计数", "11.32 ↑"]


def test_glyph_colour():
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (200, 60), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.rectangle([20, 15, 60, 45], fill=(220, 40, 40))     # red glyph
    d.rectangle([100, 15, 140, 45], fill=(40, 80, 220))   # blue glyph
    d.rectangle([160, 15, 190, 45], fill=(30, 30, 30))    # black glyph
    bgr = np.asarray(img)[:, :, ::-1].copy()
    assert glyph_colour(bgr, 10, 5, 70, 55) == "red"
    assert glyph_colour(bgr, 90, 5, 150, 55) == "blue"
    assert glyph_colour(bgr, 155, 5, 198, 55) is None


def test_card_rows_read_grey_line_and_flag_glyph_is_never_a_digit():
    lines = [
        [_tok("白细胞计数", 40, 700, 240, 745), _tok("46.9↑", 470, 700, 600, 745), _tok("偏高", 620, 705, 690, 740)],
        [_tok("参考值：3.5-9.5 10^9/L", 40, 760, 500, 790)],
        [_tok("甘油三酯", 40, 900, 200, 945), _tok("2.80", 560, 900, 640, 945, colour="red")],
        [_tok("TG 参考区间 0.56-1.70", 40, 960, 400, 990), _tok("mmol/L", 560, 960, 660, 990)],
        [_tok("钠", 40, 1100, 90, 1145), _tok("11.3↓", 560, 1100, 660, 1145)],
        [_tok("参考值：137.0-147.0 mmol/L", 40, 1160, 500, 1190)],
        [_tok("检验者：张三", 40, 1300, 300, 1340)],
    ]
    rows = [finalize_row(r, k + 1, 1) for k, r in enumerate(card_rows(lines))]
    assert [(r.name, r.value, r.unit, r.ref_low, r.ref_high, r.flag) for r in rows] == [
        ("白细胞计数", "46.9", "10^9/L", 3.5, 9.5, "H"),    # the arrow is a flag, never a digit ('46.91')
        ("甘油三酯", "2.80", "mmol/L", 0.56, 1.70, "H"),     # red value, no glyph: colour is the evidence
        ("钠", "11.3", "mmol/L", 137.0, 147.0, "L")]
    assert rows[1].code == "TG" and rows[1].flag_printed == "H" and not rows[1].needs_review
    assert rows[2].needs_review and any("implausible" in x for x in rows[2].review_reasons)


# ----------------------------------------------------------------------------- the whole extract() path
def _check(rep, sheet):
    got = {r.std_code: r for r in rep.results}
    missing = [r[0] for r in sheet.rows if r[0] not in got]
    assert not missing, (missing, [(r.name, r.value) for r in rep.results])
    assert len(rep.results) == len(sheet.rows), [(r.name, r.value) for r in rep.results]   # no duplicates
    for code, _name, val, unit, _ref, lo, hi, flag in sheet.rows:
        r = got[code]
        assert (r.value, r.unit, r.ref_low, r.ref_high, r.flag) == (val, unit, lo, hi, flag), (code, r)
    assert [r.std_code for r in rep.results] == [r[0] for r in sheet.rows]   # reading order
    flagged = sum(r.needs_review for r in rep.results)
    assert flagged <= 0.1 * len(rep.results), [(r.name, r.review_reasons) for r in rep.results if r.needs_review]
    assert rep.source["pages"][0]["preprocess"] == ["screenshot"]
    for k, v in sheet.header.items():
        assert rep.header.get(k) == v, (k, rep.header.get(k), v)
    for v in rep.header.values():   # phone chrome never becomes a header field
        assert v is None or ("9:41" not in v and "报告详情" not in v and "87%" not in v)


@pytest.mark.slow
@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_screenshot_extracted(dark):
    s = screenshot(ROWS[:6], dark=dark)
    _check(extract(s.data), s)


@pytest.mark.slow
def test_wechat_recompressed_screenshot_extracted():
    s = screenshot(ROWS[:6], fmt="JPEG")
    _check(extract(s.data), s)


@pytest.mark.slow
def test_watermark_never_becomes_a_row_or_header_field():
    s = screenshot(ROWS[:6], watermark=True)
    rep = extract(s.data)
    _check(rep, s)
    assert not any("参考" in (r.name or "") or "REFERENCE" in (r.name or "") for r in rep.results)


@pytest.mark.slow
def test_long_screenshot_read_in_tiles_without_duplicates():
    s = long_screenshot()
    img = _bgr(s.data)
    assert img.shape[0] > 2.5 * img.shape[1] and len(tile_spans(img.shape[0], img.shape[1])) >= 3
    rep = extract(s.data)
    _check(rep, s)
    assert len(s.rows) == len(LONG_ROWS)


@pytest.mark.slow
def test_table_screenshot_with_codes_under_names_extracted():
    if cjk_font_path() is None:
        pytest.skip("the table screenshot prints Chinese names: no CJK font installed")
    s = screenshot(ROWS[:8], table=True)
    _check(extract(s.data), s)
