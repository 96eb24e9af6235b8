"""Phone chrome on screenshots: the status bar, the app's title bar, tab and button bars are not part of a report.

Owns: removing those boxes by position on the screen (top and bottom bands, measured in screen widths so that
every device size is treated alike) and by what they hold (clock, battery, centred page titles, tab and button
labels; anything on the line of the status bar's clock). Never removes a box in the body of the page, and never
decides what a remaining box means.
"""
from __future__ import annotations

import re

from .inputs import Token

TOP_BAND = 0.22      # status bar + title bar: top of the first screen, in screen widths (iOS 3x: ~0.18 W)
BOTTOM_BAND = 0.20   # tab bar / button bar / home indicator / navigation bar, in screen widths
CENTRED = 0.12       # a title-bar title is centred on the screen to within this many widths

_CHROME_WORDS = re.compile(r"(详情|首页|我的|消息|服务|返回|下载|分享|PDF|打印|咨询|预约|更多|关闭|…|···|\.\.\.)", re.IGNORECASE)  # noqa: E501 - a word list (CJK counts two columns)
_CJK = re.compile(r"[\u4e00-\u9fff]")
_CLOCK = re.compile(r"\d{1,2}:\d{2}")
_STATUS = re.compile(r"\d{1,2}:\d{2}|\d%|[45]G|LTE|HD", re.IGNORECASE)   # clock, battery, network (icons read as CJK)


def drop_chrome(tokens: list[Token], width: int, height: int) -> list[Token]:
    """Tokens without the phone's status bar, title bar and bottom bars."""
    top = TOP_BAND * width
    bottom = height - BOTTOM_BAND * width
    # the status bar is the line of the clock: signal, Wi-Fi and battery icons beside it can read as CJK text
    clocks = [t for t in tokens if t.cy < top and _CLOCK.fullmatch(t.text.strip())]
    out = []
    for t in tokens:
        text = t.text.strip()
        if t.cy < top:
            centred = abs(t.cx - width / 2) < CENTRED * width
            if centred or not _CJK.search(text) or _CHROME_WORDS.search(text) or len(text) <= 1 \
                    or _STATUS.search(text) or any(c.y0 <= t.cy <= c.y1 for c in clocks):
                continue
        elif t.cy > bottom and (_CHROME_WORDS.search(text) or (not re.search(r"\d", text) and len(text) <= 6)):
            continue
        out.append(t)
    return out
