"""Bearer tokens: issue, resolve, revoke.

Owns the server-side token table. A token is 256 random bits shown to the client once; only its SHA-256 is stored, so
the database never holds a usable credential. Resolution checks expiry, revocation and the account's state on every
request, so a revoked token dies on the next request in every worker.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from vault.db.fastpath import HotStatement
from vault.db.models import Account, AuthToken
from vault.errors import Unauthenticated
from vault.identity import Identity

PREFIX = "hv_"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


def issue(session: Session, *, account: Account, now: dt.datetime, ttl_seconds: int) -> str:
    """Create a token for the account; the caller commits."""
    token = PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    session.add(
        AuthToken(
            token_hash=_digest(token),
            account_id=account.id,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=ttl_seconds),
        )
    )
    return token


_TOKENS, _ACCOUNTS = AuthToken.__table__, Account.__table__
# Built once, run on the driver's cursor: this runs on every authenticated request.
_LOOKUP = HotStatement(
    select(_TOKENS.c.expires_at, _TOKENS.c.revoked_at, _TOKENS.c.created_at, _TOKENS.c.last_seen_at, _ACCOUNTS.c.id,
           _ACCOUNTS.c.role, _ACCOUNTS.c.patient_id, _ACCOUNTS.c.is_active)
    .join(_ACCOUNTS, _ACCOUNTS.c.id == _TOKENS.c.account_id)
    .where(_TOKENS.c.token_hash == bindparam("h"))
)

# last_seen_at is written at most this often, so a busy client does not turn every read into a write.
TOUCH_EVERY = dt.timedelta(seconds=30)


def resolve(session: Session, *, token: str, now: dt.datetime, idle_timeout_seconds: int | None = None) -> Identity:
    """Identity behind a live token, or Unauthenticated (one message for every reason).

    Live = not revoked, before its absolute expiry, used within the idle timeout, account active."""
    if not token.startswith(PREFIX) or len(token) > 128:
        raise Unauthenticated()
    digest = _digest(token)
    row = _LOOKUP.first(session, {"h": digest})
    if row is None or row.revoked_at is not None or row.expires_at <= now or not row.is_active:
        raise Unauthenticated()
    last_seen = row.last_seen_at or row.created_at
    if idle_timeout_seconds is not None and now - last_seen > dt.timedelta(seconds=idle_timeout_seconds):
        raise Unauthenticated()
    if now - last_seen >= TOUCH_EVERY:
        session.execute(update(AuthToken).where(AuthToken.token_hash == digest).values(last_seen_at=now))
        session.commit()
    return Identity(account_id=row.id, role=row.role, patient_id=row.patient_id)


def revoke(session: Session, *, token: str, now: dt.datetime) -> None:
    """Mark the token revoked; the caller commits."""
    row = session.get(AuthToken, _digest(token))
    if row is not None and row.revoked_at is None:
        row.revoked_at = now
