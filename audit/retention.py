"""How long audit events must be kept, computed with a clock the caller passes in.

Owns the retention rule: no event is removable before six calendar months AND 184 days have passed (Cybersecurity
Law art. 21; the 184-day floor covers every six-month span, e.g. 31 August → end of February), nor before the
configured retention (default one year, never below the floor), and processing records of provision — grants,
consents, exports, erasures — are kept three years (PIPL arts. 55-56). Nothing here deletes anything.
"""

from __future__ import annotations

import calendar
import datetime as dt

from audit.vocabulary import LONG_RETENTION_ACTIONS

FLOOR_DAYS = 184
FLOOR_MONTHS = 6
LONG_MONTHS = 36
DEFAULT_RETENTION_DAYS = 365


def add_months(moment: dt.datetime, months: int) -> dt.datetime:
    """Same day-of-month `months` later, clamped to the month's last day (31 Aug + 6 → 28/29 Feb)."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def check_retention_days(days: int) -> int:
    if days < FLOOR_DAYS:
        raise ValueError(f"audit retention must be at least {FLOOR_DAYS} days (six months)")
    return days


def protected_until(occurred_at: dt.datetime, action: str, *,
                    retention_days: int = DEFAULT_RETENTION_DAYS) -> dt.datetime:
    """The first instant at which the event may be archived and pruned."""
    check_retention_days(retention_days)
    until = max(add_months(occurred_at, FLOOR_MONTHS), occurred_at + dt.timedelta(days=FLOOR_DAYS),
                occurred_at + dt.timedelta(days=retention_days))
    if action in LONG_RETENTION_ACTIONS:
        until = max(until, add_months(occurred_at, LONG_MONTHS))
    return until


def prunable(occurred_at: dt.datetime, action: str, *, now: dt.datetime,
             retention_days: int = DEFAULT_RETENTION_DAYS) -> bool:
    return now >= protected_until(occurred_at, action, retention_days=retention_days)
