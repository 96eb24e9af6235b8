"""Second look at empty table cells: recognition only, on the cell's crop, where detection found no text.

Owns: for a table row of a known analyte that has no result (or no reference, flag or unit where the table has
such a column and the analyte has a unit), the cell's box (row band x column interval, mapped back through the
deskew rotation), a check that the crop holds print at all, one batched recognition call on the crops, and
accepting only readings of the kind the column holds (a number or a qualitative level in the result column, a
range or a qualitative reference, a flag glyph, a unit).
Lone one-character glyphs (`-`, `+`, `±`, `↑`) are what detection misses most. Never invents a value: an empty
crop stays empty, and a reading of the wrong kind is dropped.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

from .analytes import Analyte, lookup_abbr, lookup_name
from .layout import Atom, Column, RawRow, Table, split_name_code
from .parse import canon_unit, classify_value, parse_flag, parse_range

ReadLines = Callable[[list[np.ndarray]], list[tuple[str, float]]]

# recognition of a lone glyph without context: CJK look-alikes of the signs; a short dash shrunk on a photo reads
# as a dot (a dot alone in a result or reference cell is never a number)
_GLYPHS = str.maketrans({"一": "-", "—": "-", "－": "-", "_": "-", "·": "-", "。": "-", "十": "+", "土": "±", "干": "±"})  # noqa: E501 - a word list (CJK counts two columns)
ROLES = ("result", "ref", "flag", "unit")
MIN_SCORE = 0.3   # a lone sign on a photo reads with low scores (0.35-0.8); its kind is checked as well


def _known_analyte(row: RawRow) -> Analyte | None:
    name = row.text("name")
    code = row.text("code")
    if name:
        n, c = split_name_code(name)
        found = lookup_name(n)[0] or (lookup_abbr(c) if c else None)
        if found is not None:
            return found
    return lookup_abbr(code) if code else None


def _interval(group: list[Column], role: str, all_cols: list[Column]) -> tuple[float, float] | None:
    col = next((c for c in group if c.role == role), None)
    if col is None:
        return None
    cols = sorted(all_cols, key=lambda c: c.x0)
    k = cols.index(col)
    left = (cols[k - 1].x1 + col.x0) / 2 if k > 0 else col.x0 - (col.x1 - col.x0)
    right = (col.x1 + cols[k + 1].x0) / 2 if k + 1 < len(cols) else col.x1 + (col.x1 - col.x0)
    return left, right


def _crop(img: np.ndarray, box: tuple[float, float, float, float], angle: float) -> tuple[np.ndarray, bool] | None:
    """The box (deskewed coordinates) cut from the OCR input image with its print centred on a plain field, and
    whether that print is one short horizontal bar (a dash by its shape); None if the cell is blank."""
    import cv2

    x0, y0, x1, y1 = box
    c, s = math.cos(angle), math.sin(angle)
    pts = [(x * c - y * s, x * s + y * c) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    h, w = img.shape[:2]
    a = max(0, int(min(p[0] for p in pts)))
    b = min(w, int(max(p[0] for p in pts)) + 1)
    t = max(0, int(min(p[1] for p in pts)))
    u = min(h, int(max(p[1] for p in pts)) + 1)
    if b - a < 4 or u - t < 4:
        return None
    crop = img[t:u, a:b]
    g = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    marks = (cv2.morphologyEx(g, cv2.MORPH_BLACKHAT, np.ones((9, 9), np.uint8)) > 50).astype(np.uint8)
    # table rules are not print: drop runs across most of the crop (row rules) or down all of it (grid lines)
    # (thickened first, so that a rule tilted by a degree or two is still one run)
    # a dashed rule's gaps are closed first; only thin runs count as rules, never a line of text
    gap = max(3, marks.shape[0] // 4)
    across = cv2.morphologyEx(cv2.dilate(marks, np.ones((5, 1), np.uint8)), cv2.MORPH_CLOSE,
                              np.ones((1, gap), np.uint8))
    across = cv2.morphologyEx(across, cv2.MORPH_OPEN, np.ones((1, max(3, int(0.6 * marks.shape[1]))), np.uint8))
    n, lab, stats, _ = cv2.connectedComponentsWithStats(across)
    for k in range(1, n):
        if stats[k, cv2.CC_STAT_HEIGHT] > max(8, 0.3 * marks.shape[0]):
            across[lab == k] = 0
    down = cv2.morphologyEx(cv2.dilate(marks, np.ones((1, 5), np.uint8)), cv2.MORPH_OPEN,
                            np.ones((max(3, int(0.8 * marks.shape[0])), 1), np.uint8))
    rule_px = cv2.dilate(np.maximum(across, down), np.ones((3, 3), np.uint8)) > 0
    ink = (marks > 0) & ~rule_px
    # only print centred on the row: the edge of the next row's text or a curved rule at the band's edge is not it
    n, lab, _, centres = cv2.connectedComponentsWithStats(ink.astype(np.uint8))
    off_row = np.zeros(ink.shape, bool)
    for k in range(1, n):
        if abs(centres[k][1] - ink.shape[0] / 2) > 0.3 * ink.shape[0]:
            off_row |= lab == k
    ink &= ~off_row
    rule_px |= cv2.dilate(off_row.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    ys, xs = np.nonzero(ink)
    if len(xs) < 6:
        return None
    kept = [k for k in range(1, n) if (lab == k).any() and not off_row[lab == k].any()]
    bar_h, bar_w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    dash = len(kept) == 1 and bar_h <= 0.3 * ink.shape[0] and bar_w >= 1.3 * bar_h
    # the print centred on a white field a band high and a few bands wide: recognition reads a lone glyph
    # as a line of text (cut tight around a '-', it reads '。')
    band = u - t
    cy = (ys.min() + ys.max()) / 2
    ink_w = xs.max() - xs.min() + 1
    field_w = int(max(ink_w + band, 2.5 * band))
    paper = np.median(crop.reshape(-1, 3), axis=0).astype(np.uint8)
    out = np.empty((band, field_w, 3), np.uint8)
    out[:] = paper
    crop = crop.copy()
    crop[rule_px] = paper   # rules and off-row marks painted out: they read as '二', '一' or '日' with the print
    ya, yb = max(0, int(cy - band / 2)), min(g.shape[0], int(cy + band / 2))
    xa, xb = max(0, xs.min() - band // 4), min(g.shape[1], xs.max() + band // 4 + 1)
    piece = crop[ya:yb, xa:xb]
    oy, ox = (band - piece.shape[0]) // 2, (field_w - piece.shape[1]) // 2
    out[oy:oy + piece.shape[0], ox:ox + piece.shape[1]] = piece
    return out, dash


def _accept(role: str, text: str) -> str | None:
    t = text.strip().translate(_GLYPHS).replace(" ", "")
    if not t:
        return None
    if role == "result":
        return t if classify_value(t) else None
    if role == "ref":
        return t if parse_range(t) is not None else None
    if role == "unit":   # a unit read with bits of a dashed rule: '1___%__.-'
        return next((p for p in [t, *(q.strip(".") for q in re.split(r"[-_\s]+", t))] if canon_unit(p)), None)
    return t if parse_flag(t) else None


def reread_empty_cells(tables: list[Table], H: float, img: np.ndarray, angle: float,
                       read_lines: ReadLines) -> int:
    """Fill empty result/reference/flag cells of named rows from a recognition-only pass; returns cells filled."""
    jobs: list[tuple[RawRow, str, tuple[float, float, float, float], bool]] = []
    crops: list[np.ndarray] = []
    for tb in tables:
        all_cols = [c for g in tb.groups for c in g]
        for row in tb.rows:
            analyte = _known_analyte(row)
            if analyte is None:
                continue  # footnotes ('提示：H 偏高 L 偏低') and stray lines are not rows to complete
            group = tb.groups[row.group]
            for role in ROLES:
                if row.cells.get(role) or (role == "unit" and (None in analyte.units or not analyte.units)):
                    continue
                iv = _interval(group, role, all_cols)
                if iv is None:
                    continue
                left, right = iv
                for al in row.cells.values():   # a long name running into the column: start after it
                    for a in al:
                        if a.x0 < left < a.x1:
                            left = a.x1 + 0.2 * H
                        if a.x0 < right < a.x1:
                            right = a.x0 - 0.2 * H
                if right - left < 0.5 * H:
                    continue
                box = (left, row.cy - 0.6 * H, right, row.cy + 0.6 * H)
                cut = _crop(img, box, angle)
                if cut is not None:
                    jobs.append((row, role, box, cut[1]))
                    crops.append(cut[0])
    filled = 0
    for (row, role, box, dash), (text, score) in zip(jobs, read_lines(crops) if crops else [], strict=False):
        t = _accept(role, text) if score >= MIN_SCORE else None
        if t is None and dash and role in ("result", "ref"):
            # one short bar alone in a result or reference cell: a '-' too small for recognition ('日', 'β')
            t, score = "-", max(score, MIN_SCORE)
        if t is None:
            continue
        row.add(Atom(t, box[0], box[1], box[2], box[3], score, col=role))
        filled += 1
    return filled
