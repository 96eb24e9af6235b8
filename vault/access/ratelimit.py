"""Rate limits on the doors that take guesses: registration, sign-in, TOTP steps and password change (IP-4, AUTH-4).

Owns counting attempts in fixed windows per client address and per target (a username, an ID number, a phone being
verified) and refusing
past the limit with 429 `rate-limited` and Retry-After. Counts live in the data database (`rate_limits`), so every
API process sees the same numbers, and each attempt is counted in a transaction of its own, committed before the
attempt is judged: a failing sign-in cannot roll its own count back. Buckets are keyed pseudonyms of (scope, value),
never the address, username or ID number itself. It never decides access: that is the gate's.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from vault.access import audit_append
from vault.db.models import RateLimit
from vault.errors import RateLimited
from vault.identity import RequestContext

if TYPE_CHECKING:
    from vault.runtime import Vault

CLIENT = "client"
KEEP = dt.timedelta(days=1)  # buckets whose window began longer ago than this are swept


def _count(vault: Vault, bucket: str, *, window: dt.timedelta) -> tuple[int, dt.datetime]:
    """One more attempt in `bucket`; returns (attempts in the current window, when the window began)."""
    now = vault.clock()
    insert = sqlite_insert if vault.engine.dialect.name == "sqlite" else pg_insert
    with vault.session() as session:
        session.execute(insert(RateLimit).values(bucket=bucket, window_start=now, hits=0)
                        .on_conflict_do_nothing(index_elements=["bucket"]))
        row = session.execute(select(RateLimit).where(RateLimit.bucket == bucket).with_for_update()).scalar_one()
        if row.window_start <= now - window:
            row.window_start, row.hits = now, 0
        row.hits += 1
        hits, started = row.hits, row.window_start
        session.execute(delete(RateLimit).where(RateLimit.window_start < now - KEEP))
        session.commit()
    return hits, started


def check(vault: Vault, *, ctx: RequestContext, scope: str, target: str | None, per_client: bool = True) -> None:
    """Count this attempt for the client and for `target` in `scope`; 429 when either is over its limit.
    `per_client=False`: a second check within one attempt the client was already counted for."""
    settings = vault.settings
    window = dt.timedelta(seconds=settings.rate_limit_window_seconds)
    limits = [(f"{CLIENT}", ctx.client_addr or "-", settings.rate_limit_per_client)] if per_client else []
    if target is not None:
        limits.append((scope, target, settings.rate_limit_per_target))
    for kind, value, limit in limits:
        hits, started = _count(vault, audit_append.keyed_pseudonym(vault, f"rate:{kind}", value), window=window)
        if hits > limit:
            retry = max(1, math.ceil((started + window - vault.clock()).total_seconds()))
            raise RateLimited("Too many attempts; try again later", extra={"retry_after": retry})
