"""Instants from clients: what a time a client sends (a grant window, a search or export range, a cursor) may be.

Owns one rule for every such time: it carries an offset (a naive time is refused, never guessed as UTC or local),
and it lies within [EARLIEST, LATEST] once converted to UTC, so that converting it, comparing it with the aware
times the database returns and adding any window the vault uses (days to a few years) never overflows. Refusals are
422 `invalid-input` naming the field; the value is never echoed. Never: compares a naive time with an aware one.
"""

from __future__ import annotations

import datetime as dt
from typing import overload

from vault.errors import InvalidInput

# Far enough from datetime.min/max that any window the vault adds or subtracts (grants: days; retention: years)
# stays representable; wide enough for every real medical or audit time.
EARLIEST = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(9000, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)


def problem(value: dt.datetime) -> str | None:
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


def to_utc(value: dt.datetime) -> dt.datetime:
    """`value` in UTC, if it is an acceptable client instant (see `problem`); else ValueError (for pydantic)."""
    reason = problem(value)
    if reason is not None:
        raise ValueError(f"the time {reason}")
    return value.astimezone(dt.UTC)


@overload
def checked(value: dt.datetime, *, field: str) -> dt.datetime: ...


@overload
def checked(value: None, *, field: str) -> None: ...


@overload
def checked(value: dt.datetime | None, *, field: str) -> dt.datetime | None: ...


def checked(value: dt.datetime | None, *, field: str) -> dt.datetime | None:
    """`value` in UTC (None stays None); 422 `invalid-input` naming `field` when it is naive or out of range."""
    if value is None:
        return None
    reason = problem(value)
    if reason is not None:
        raise InvalidInput(f"{field} {reason}", extra={"reason": field})
    return value.astimezone(dt.UTC)
