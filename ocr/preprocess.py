"""Image pre-processing before OCR: page-quadrilateral perspective correction (phone photos), downscale.

Measured on the dev set (see bench/bench_ocr.py): perspective correction is what makes photos readable in rows;
deskew is done afterwards on the OCR boxes' geometry (layout.deskew), without a second OCR pass.
"""
from __future__ import annotations

import numpy as np

MAX_OCR_SIDE = 2000


def _order(pts: np.ndarray) -> np.ndarray:
    s = pts.sum(1)
    d = np.diff(pts, axis=1).ravel()
    return np.array([pts[np.argmin(s)], pts[np.argmin(d)], pts[np.argmax(s)], pts[np.argmax(d)]], dtype=np.float32)


def find_page_quad(img: np.ndarray) -> np.ndarray | None:
    """Corners (tl, tr, br, bl) of a sheet of paper lying on a darker background, or None."""
    import cv2

    h, w = img.shape[:2]
    scale = 800.0 / max(h, w)
    small = cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
    sharp = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    gray = cv2.GaussianBlur(sharp, (5, 5), 0)
    _, th = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    th = cv2.morphologyEx(th, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
    contours, _ = cv2.findContours(th, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(c)
    frac = area / float(small.shape[0] * small.shape[1])
    if not (0.25 < frac < 0.95):
        return None
    peri = cv2.arcLength(c, True)
    quad = None
    for eps in (0.02, 0.03, 0.05):
        approx = cv2.approxPolyDP(c, eps * peri, True)
        if len(approx) == 4 and cv2.isContourConvex(approx):
            quad = approx.reshape(4, 2).astype(np.float32)
            break
    if quad is None:
        rect = cv2.minAreaRect(c)
        quad = cv2.boxPoints(rect).astype(np.float32)
    quad = _order(quad)
    sh, sw = small.shape[:2]
    mx, my = 0.01 * sw, 0.01 * sh
    inside = sum(1 for x, y in quad if mx < x < sw - mx and my < y < sh - my)
    if inside < 4:  # a real photo shows background all round; a shadow band touching the frame is not a page edge
        return None
    if ink_outside(sharp, quad) > MAX_INK_OUTSIDE:
        # print outside the quadrilateral: the contour is a lit part of a curled or folded page, not its edge;
        # warping to it would cut the page (better no perspective correction than a lost table or header)
        return None
    return quad / scale


MAX_INK_OUTSIDE = 0.01   # print outside / inside a page quadrilateral: 0 for true page edges, 0.016-0.57 seen when not


def ink_outside(gray: np.ndarray, quad: np.ndarray) -> float:
    """Dark small marks (print) outside the quadrilateral grown by 4 %, relative to those inside it."""
    import cv2

    ink = cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, np.ones((7, 7), np.uint8)) > 40
    c = quad.mean(axis=0)
    grown = (c + (quad - c) * 1.04).astype(np.int32)
    mask = np.zeros(gray.shape, np.uint8)
    cv2.fillConvexPoly(mask, grown, 1)
    inside = int(ink[mask == 1].sum())
    return int(ink[mask == 0].sum()) / max(1, inside)


def correct_perspective(img: np.ndarray, max_side: int | None = None) -> tuple[np.ndarray, bool]:
    """Warp the page quadrilateral to a rectangle; with max_side, straight to at most that long side (one resample
    of the photo instead of a full-resolution warp followed by a downscale)."""
    import cv2

    quad = find_page_quad(img)
    if quad is None:
        return img, False
    tl, tr, br, bl = quad
    wd = (np.linalg.norm(tr - tl) + np.linalg.norm(br - bl)) / 2
    ht = (np.linalg.norm(bl - tl) + np.linalg.norm(br - tr)) / 2
    if wd < 200 or ht < 200:
        return img, False
    if max_side and max(wd, ht) > max_side:
        f = max_side / max(wd, ht)
        wd, ht = wd * f, ht * f
    dst = np.array([[0, 0], [wd - 1, 0], [wd - 1, ht - 1], [0, ht - 1]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(quad, dst)
    out = cv2.warpPerspective(img, m, (int(wd), int(ht)), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out, True


def normalise_contrast(img: np.ndarray) -> np.ndarray:
    """Flatten uneven lighting: divide by a blurred background estimate."""
    import cv2

    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    bg = cv2.morphologyEx(gray, cv2.MORPH_CLOSE, np.ones((15, 15), np.uint8))
    bg = cv2.GaussianBlur(bg, (0, 0), 15)
    norm = cv2.divide(gray, np.maximum(bg, 1), scale=255)
    return cv2.cvtColor(norm, cv2.COLOR_GRAY2BGR)


def downscale(img: np.ndarray, max_side: int = MAX_OCR_SIDE) -> tuple[np.ndarray, float]:
    import cv2

    h, w = img.shape[:2]
    s = max(h, w)
    if s <= max_side:
        return img, 1.0
    f = max_side / s
    return cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA), f


def prepare(img: np.ndarray, *, perspective: bool = True, contrast: bool = False) -> tuple[np.ndarray, list[str]]:
    steps = []
    if perspective:
        img, done = correct_perspective(img, MAX_OCR_SIDE)
        if done:
            steps.append("perspective")
    img, f = downscale(img)
    if f != 1.0:
        steps.append(f"downscale:{f:.3f}")
    if contrast:
        img = normalise_contrast(img)
        steps.append("contrast")
    return img, steps
