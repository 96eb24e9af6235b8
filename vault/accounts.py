"""Accounts: creation, lookup and sign-in.

Owns usernames (normalised, unique), password hashes and the sign-in flow. Every sign-in, successful or not, is
audited. Messages never say whether a username exists.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vault import audit_log, tokens
from vault.errors import Conflict, InvalidCredentials, InvalidInput
from vault.identifiers import normalize_username
from vault.identity import Identity, RequestContext
from vault.models import ROLES, Account


def get(session: Session, *, account_id: str) -> Account | None:
    return session.get(Account, account_id)


def get_by_username(session: Session, *, username: str) -> Account | None:
    return session.scalar(select(Account).where(Account.username == normalize_username(username)))


def build(vault, *, username: str, password: str, role: str, patient_id: str | None = None,
          must_change_password: bool = False) -> Account:
    """A validated, hashed, not yet persisted account."""
    if role not in ROLES:
        raise InvalidInput("Unknown role", extra={"reason": "role"})
    name = normalize_username(username)
    vault.passwords.check(password, username=name)
    return Account(
        id=str(uuid.uuid4()),
        username=name,
        password_hash=vault.passwords.hash(password),
        role=role,
        patient_id=patient_id,
        is_active=True,
        must_change_password=must_change_password,
        created_at=vault.clock(),
    )


def create(session: Session, vault, *, username: str, password: str, role: str, ctx: RequestContext,
           created_by: Identity | None = None, must_change_password: bool = False) -> Account:
    """Create a staff account (the CLI path); audited as account.create."""
    account = build(vault, username=username, password=password, role=role,
                    must_change_password=must_change_password)
    if get_by_username(session, username=account.username) is not None:
        raise Conflict("An account with this username already exists")
    session.add(account)
    actor = created_by or Identity(account_id="cli", role="sysadmin")
    audit_log.append(session, vault, identity=actor, ctx=ctx, action="account.create", outcome="allow",
                     resource_type="account", resource_id=account.id, reason=role)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict("An account with this username already exists") from exc
    return account


def login(session: Session, vault, *, username: str, password: str, ctx: RequestContext) -> tuple[str, int]:
    """Verify the password and issue a token; the same InvalidCredentials for every failure."""
    try:
        name = normalize_username(username)
    except Exception:  # noqa: BLE001 - a malformed name is just a failed login
        name = None
    account = session.scalar(select(Account).where(Account.username == name)) if name else None
    ok = vault.passwords.verify(account.password_hash if account else None, password)
    now = vault.clock()
    if not ok or account is None or not account.is_active:
        actor = (Identity(account_id=account.id, role=account.role) if account
                 else Identity(account_id="unknown:" + (name or "-"), role="anonymous"))
        audit_log.append(session, vault, identity=actor, ctx=ctx, action="login_failed",
                         outcome="deny", resource_type="account", resource_id=account.id if account else None,
                         reason="bad-credentials" if account is None or not ok else "inactive")
        session.commit()
        raise InvalidCredentials()
    token = tokens.issue(session, account=account, now=now, ttl_seconds=vault.settings.token_ttl_seconds)
    audit_log.append(session, vault,
                     identity=Identity(account_id=account.id, role=account.role, patient_id=account.patient_id),
                     ctx=ctx, action="login", outcome="allow", resource_type="account", resource_id=account.id,
                     patient_id=account.patient_id)
    session.commit()
    return token, vault.settings.token_ttl_seconds


def logout(session: Session, vault, *, token: str, identity: Identity, ctx: RequestContext) -> None:
    tokens.revoke(session, token=token, now=vault.clock())
    audit_log.append(session, vault, identity=identity, ctx=ctx, action="logout", outcome="allow", resource_type="account",
                     resource_id=identity.account_id)
    session.commit()
