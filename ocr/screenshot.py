"""Phone screenshots: recognising one, and reading it in full-resolution tiles.

Owns: the screenshot test (tall aspect ratio and flat synthetic colours), cutting a tall image into overlapping
horizontal tiles (a long screenshot is never shrunk as a whole: text detection runs tile by tile on a screen-wide
copy, recognition on the full-resolution image), and keeping every text line exactly once (each tile owns the band
between the middles of its overlaps, and a line belongs to the tile whose band holds its centre) before any line is
recognised.
Never decides what a line means (chrome, header, rows: chrome.py, pipeline.py; a faint line is a watermark by
colour.py's measure) and never looks at file names.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from .engine import Quad, TextBox

MIN_ASPECT = 1.6        # height / width of a phone screen in portrait (16:9 is 1.78, modern phones 2.0-2.3)
MAX_WIDTH = 1800        # phone screens are 720-1440 px wide
MIN_FLAT = 0.85         # share of horizontally adjacent pixel pairs that differ by <= 2 grey levels
TILE_MAX_SIDE = 2000    # tiles are at most this tall (the engine's own input limit)
WATERMARK_SLOPE = 0.2  # |dy/dx| of a box's top edge above which it is a slanted watermark (~11 degrees)
DET_WIDTH = 720         # screen width (px) of the copy text detection runs on
TILE_ASPECT = 1.5       # tile height as a multiple of the width (below the engine limit)


def flatness(img: np.ndarray) -> float:
    """Share of horizontally adjacent pixel pairs that (almost) do not differ: ~0.95 for rendered screens and clean
    page renders, 0.5-0.8 for camera photos (sensor noise, texture)."""
    import cv2

    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
    step = max(1, g.shape[0] // 1200)
    g = g[::step].astype(np.int16)
    return float((np.abs(np.diff(g, axis=1)) <= 2).mean())


def is_screenshot(img: np.ndarray) -> bool:
    """A phone screenshot: portrait and tall (a screen, or several screens stitched), phone width, flat colours."""
    h, w = img.shape[:2]
    if w > MAX_WIDTH or h < MIN_ASPECT * w:
        return False
    return flatness(img) >= MIN_FLAT


def tile_spans(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(tile_y0, tile_y1, own_y0, own_y1) per tile: tiles overlap, and each owns the band between the middles of
    its overlaps, so a text line whose centre is in a tile's band is wholly inside that tile when the overlap is
    more than twice the tallest line."""
    tile = int(min(TILE_MAX_SIDE, max(400, TILE_ASPECT * width)))
    overlap = int(max(200, 0.18 * width))
    if height <= tile:
        return [(0, height, 0, height)]
    step = tile - overlap
    n = int(np.ceil((height - overlap) / step))
    step = int(np.ceil((height - overlap) / n))   # spread evenly: no sliver of a last tile
    tile = step + overlap
    spans = []
    for k in range(n):
        y0 = k * step
        y1 = min(height, y0 + tile)
        own0 = 0 if k == 0 else y0 + overlap // 2
        own1 = height if k == n - 1 else y0 + step + overlap // 2
        spans.append((y0, y1, own0, own1))
    return spans


def det_side_for(width: int, tile_height: int) -> int:
    """Long side of the detection copy of a tile: the screen scaled to DET_WIDTH px wide (never enlarged). Screen
    text is large (small grey print is ~3 % of the width: >= 20 px at 720 px), so detection on a screen-wide copy
    of 720 px finds every line; recognition still crops the full-resolution tile."""
    scale = min(1.0, DET_WIDTH / max(1, width))
    return max(32, round(max(width, tile_height) * scale))


def _owned(quad: Quad, y0: int, own0: int, own1: int) -> Quad | None:
    """The tile's box in image coordinates if the tile owns it (its centre in the tile's band) and it is not a
    slanted watermark; else None."""
    q = [(x, y + y0) for x, y in quad]
    (ax, ay), (bx, by) = q[0], q[1]
    if abs(by - ay) > WATERMARK_SLOPE * max(1.0, abs(bx - ax)):
        return None  # a slanted line on a screen is a watermark: screens are never rotated
    cy = sum(y for _, y in q) / len(q)
    return q if own0 <= cy < own1 else None


def read_tiled(img: np.ndarray, detect: Callable[[np.ndarray, int], list[Quad]],
               recognize_quads: Callable[[np.ndarray, list[Quad]], list[TextBox]],
               keep: Callable[[Quad], bool] | None = None) -> list[TextBox]:
    """Detect tile by tile (on a screen-wide copy, det_side_for), keep each line once (the tile that owns it) and
    only the boxes `keep` accepts, then recognise all of them in one batched call on the full-resolution image:
    a line in a tile overlap is read once, not once per tile, and a box that would be dropped is never read."""
    h, w = img.shape[:2]
    quads: list[Quad] = []
    for y0, y1, own0, own1 in tile_spans(h, w):
        for quad in detect(img[y0:y1], det_side_for(w, y1 - y0)):
            q = _owned(quad, y0, own0, own1)
            if q is not None and (keep is None or keep(q)):
                quads.append(q)
    return recognize_quads(img, quads)


def recognize_tiled(img: np.ndarray, recognize: Callable[[np.ndarray], list[TextBox]],
                    recognize_at: Callable[[np.ndarray, int], list[TextBox]] | None = None) -> list[TextBox]:
    """OCR a tall image tile by tile at full resolution (engines without separate detection and recognition);
    boxes come back in image coordinates, each line once. `recognize_at(tile, det_side)`, when the engine has it,
    detects on a screen-wide copy (det_side_for)."""
    h, w = img.shape[:2]
    out: list[TextBox] = []
    for y0, y1, own0, own1 in tile_spans(h, w):
        tile = np.ascontiguousarray(img[y0:y1])
        boxes = recognize_at(tile, det_side_for(w, y1 - y0)) if recognize_at else recognize(tile)
        for b in boxes:
            q = _owned(b.quad, y0, own0, own1)
            if q is not None:
                out.append(TextBox(q, b.text, b.score))
    return out


def read_screen(img: np.ndarray, engine: Any) -> list[TextBox]:
    """The text lines of a screenshot, read in tiles; faint text over the page is a watermark (slanted ones are
    dropped by the tiling): with an engine that detects apart from recognising, such boxes are never recognised."""
    from .colour import MIN_CONTRAST, glyph_contrast

    def legible(quad: Quad) -> bool:
        xs, ys = [p[0] for p in quad], [p[1] for p in quad]
        return glyph_contrast(img, min(xs), min(ys), max(xs), max(ys)) >= MIN_CONTRAST

    detect, recognize_quads = getattr(engine, "detect", None), getattr(engine, "recognize_quads", None)
    if detect is not None and recognize_quads is not None:
        return read_tiled(img, detect, recognize_quads, keep=legible)
    recognize_at = None
    if "det_side" in inspect.signature(engine.recognize).parameters:   # a per-call detection size
        recognize_at = lambda tile, side: engine.recognize(tile, det_side=side)
    return [b for b in recognize_tiled(img, engine.recognize, recognize_at) if legible(b.quad)]
