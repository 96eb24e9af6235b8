"""Text colour of OCR boxes on screenshots: red or blue glyphs as evidence for a high or low flag, and faint
glyphs as the mark of a watermark.

Owns: measuring the glyph pixels inside a box (pixels that differ from the box's background, the background being
the median colour at the box border): their colour, and how far the strongest of them stand out. Never decides a
flag on its own (the row builder weighs colour against the printed glyph and the value vs reference range), and
never drops a box itself.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .inputs import Token


def glyph_colour(img: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> str | None:
    """'red' | 'blue' | None for the glyphs in the box (BGR image)."""
    h, w = img.shape[:2]
    a, b = max(0, int(x0)), min(w, int(x1) + 1)
    c, d = max(0, int(y0)), min(h, int(y1) + 1)
    if b - a < 3 or d - c < 3:
        return None
    box = img[c:d, a:b].reshape(-1, 3).astype(np.int16)
    border = np.concatenate([img[c, a:b], img[d - 1, a:b], img[c:d, a], img[c:d, b - 1]]).astype(np.int16)
    bg = np.median(border, axis=0)
    diff = np.abs(box - bg).sum(axis=1)
    ink = box[diff > 90]
    if len(ink) < 8:
        return None
    bl, g, r = (float(v) for v in np.median(ink, axis=0))
    if r - g > 60 and r - bl > 45:
        return "red"
    if bl - r > 50 and bl - g > 15:
        return "blue"
    return None


MIN_CONTRAST = 110   # summed |dB|+|dG|+|dR| of the strongest glyph pixels: grey print on a card >= ~250,
                     # a watermark (text at 5-15 % opacity) <= ~80


def glyph_contrast(img: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> float:
    """How far the strongest glyph pixels in the box differ from its background (95th percentile)."""
    h, w = img.shape[:2]
    a, b = max(0, int(x0)), min(w, int(x1) + 1)
    c, d = max(0, int(y0)), min(h, int(y1) + 1)
    if b - a < 3 or d - c < 3:
        return 0.0
    box = img[c:d, a:b].reshape(-1, 3).astype(np.int16)
    border = np.concatenate([img[c, a:b], img[d - 1, a:b], img[c:d, a], img[c:d, b - 1]]).astype(np.int16)
    return float(np.percentile(np.abs(box - np.median(border, axis=0)).sum(axis=1), 95))


def mark_colours(img: np.ndarray, tokens: Sequence[Token]) -> None:
    """Set Token.colour on short boxes (values, flags, pills): the only ones where colour carries a meaning."""
    for t in tokens:
        if len(t.text.strip()) <= 12:
            t.colour = glyph_colour(img, t.x0, t.y0, t.x1, t.y1)
