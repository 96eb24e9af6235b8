"""Server-rendered SVG trend charts: one analyte across reports, with its reference band.

Owns drawing. Input is a list of (label, value, flag) points and an optional reference range; output is SVG markup
built from escaped text and numbers only, with presentation attributes (no `style`, no script), so the strict CSP
holds. Never fetches data.
"""

from __future__ import annotations

import dataclasses
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 480, 300
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 34, 64
INSET = 36  # the first and last points stay clear of the axes, their labels inside the picture


@dataclasses.dataclass(frozen=True)
class Point:
    label: str
    value: float
    flag: str | None


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _labels(points: list[Point]) -> list[str]:
    """Short date labels (MM-DD); reports of one day are numbered so that no two labels read the same."""
    short = [p.label[5:10] if len(p.label) >= 10 else p.label[:10] for p in points]
    return [f"{s} #{short[:i + 1].count(s)}" if short.count(s) > 1 else s for i, s in enumerate(short)]


def trend_svg(points: list[Point], *, title: str, unit: str | None, low: float | None, high: float | None,
              band_label: str) -> Markup:
    values = [p.value for p in points]
    bounds = values + [v for v in (low, high) if v is not None]
    lo, hi = min(bounds), max(bounds)
    if hi == lo:
        hi, lo = hi + 1, lo - 1
    pad = (hi - lo) * 0.12
    lo, hi = lo - pad, hi + pad
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        span = inner_w - 2 * INSET
        return LEFT + INSET + (span / 2 if len(points) == 1 else span * i / (len(points) - 1))

    def y(v: float) -> float:
        return TOP + inner_h * (hi - v) / (hi - lo)

    labels = _labels(points)
    parts = [f'<svg class="trend" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="trend-title" '
             f'xmlns="http://www.w3.org/2000/svg"><title id="trend-title">{escape(title)}</title>']
    if low is not None or high is not None:
        band_top = y(high) if high is not None else TOP
        band_bottom = y(low) if low is not None else TOP + inner_h
        parts.append(f'<rect class="band" x="{LEFT}" y="{band_top:.1f}" width="{inner_w}" '
                     f'height="{max(band_bottom - band_top, 1):.1f}" fill="#d8f0dc"/>')
        parts.append(f'<rect x="{LEFT}" y="{HEIGHT - 22}" width="18" height="14" fill="#d8f0dc" stroke="#1d5b2a"/>')
        parts.append(f'<text x="{LEFT + 24}" y="{HEIGHT - 9}" font-size="16" fill="#1d5b2a">'
                     f'{escape(band_label)}</text>')
    for tick in (lo + pad, (lo + hi) / 2, hi - pad):
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
                     f'stroke="#bbb" stroke-width="1"/>')
        parts.append(f'<text x="{LEFT - 8}" y="{y(tick) + 5:.1f}" text-anchor="end" font-size="16" '
                     f'fill="#222">{escape(_fmt(tick))}</text>')
    if unit:
        parts.append(f'<text x="8" y="{TOP - 12}" font-size="16" fill="#222">{escape(unit)}</text>')
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(i):.1f},{y(p.value):.1f}" for i, p in enumerate(points))
    parts.append(f'<path d="{path}" fill="none" stroke="#0b4f9c" stroke-width="3"/>')
    for i, p in enumerate(points):
        color = "#b00020" if p.flag in ("H", "L") else "#0b4f9c"
        parts.append(f'<circle cx="{x(i):.1f}" cy="{y(p.value):.1f}" r="7" fill="{color}">'
                     f'<title>{escape(p.label)}: {escape(_fmt(p.value))}</title></circle>')
        parts.append(f'<text x="{x(i):.1f}" y="{y(p.value) - 12:.1f}" text-anchor="middle" font-size="18" '
                     f'font-weight="bold" fill="{color}">{escape(_fmt(p.value))}</text>')
        parts.append(f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 24}" text-anchor="middle" font-size="16" '
                     f'fill="#222">{escape(labels[i])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated value above is escaped or a number
