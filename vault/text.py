"""What clients send, made safe: the text a title, file name, purpose, reason or name may contain, and the times.

Owns one rule for every free-text field a client sends: visible characters and ordinary spaces only. Control
characters (C0 with CR, LF and TAB, DEL, C1), line and paragraph separators and the bidirectional formatting
characters (which can make `exe.pdf` display as `fdp.exe`) are refused with a 422 naming the field, never stripped
silently, so what is stored is what the client saw. The value is never echoed in the error.

Times (issue 14 item 2): every time a client sends (a grant window, a search or export range, a cursor) carries an
offset — a naive time is refused, never guessed as UTC or local — and lies within [EARLIEST, LATEST] once converted to
UTC, so that converting it, comparing it with the aware times the database returns and adding any window the vault
uses (days to a few years) never overflows. Refusals are 422 naming the field; the value is never echoed. Nothing here
compares a naive time with an aware one.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from typing import overload

from vault.errors import InvalidInput

# Bidi embeddings, overrides and isolates, the implicit marks, and the Arabic letter mark.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def is_inert(value: str) -> bool:
    """True when no character could move, hide or break lines of the text around it."""
    return not any(c in _BIDI or unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value)


def inert(value: str, *, field: str, max_length: int, min_length: int = 1) -> str:
    """`value` with surrounding spaces removed, if it is `min_length`..`max_length` inert characters; else 422."""
    value = value.strip()
    if not min_length <= len(value) <= max_length or not is_inert(value):
        raise InvalidInput(f"{field} must be {min_length}-{max_length} characters without control or direction "
                           "characters", extra={"reason": field})
    return value


# ---- times ----------------------------------------------------------------------------------------------------------

# Far enough from datetime.min/max that any window the vault adds or subtracts (grants: days; retention: years)
# stays representable; wide enough for every real medical or audit time.
EARLIEST = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(9000, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)


def instant_problem(value: dt.datetime) -> str | None:
    """Why `value` is not an acceptable client instant, or None when it is."""
    if value.tzinfo is None or value.utcoffset() is None:
        return "must carry a UTC offset (e.g. 2026-01-31T08:00:00Z or +08:00)"
    try:
        utc = value.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        return "is out of range"
    if not EARLIEST <= utc <= LATEST:
        return f"must lie between {EARLIEST.year} and {LATEST.year}"
    return None


def utc_instant(value: dt.datetime) -> dt.datetime:
    """`value` in UTC, if it is an acceptable client instant (see `instant_problem`); else ValueError (for pydantic)."""
    reason = instant_problem(value)
    if reason is not None:
        raise ValueError(f"the time {reason}")
    return value.astimezone(dt.UTC)


@overload
def checked_instant(value: dt.datetime, *, field: str) -> dt.datetime: ...


@overload
def checked_instant(value: None, *, field: str) -> None: ...


@overload
def checked_instant(value: dt.datetime | None, *, field: str) -> dt.datetime | None: ...


def checked_instant(value: dt.datetime | None, *, field: str) -> dt.datetime | None:
    """`value` in UTC (None stays None); 422 `invalid-input` naming `field` when it is naive or out of range."""
    if value is None:
        return None
    reason = instant_problem(value)
    if reason is not None:
        raise InvalidInput(f"{field} {reason}", extra={"reason": field})
    return value.astimezone(dt.UTC)
