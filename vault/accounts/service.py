"""Accounts: creation, lookup and sign-in.

Owns usernames (normalised, unique), password hashes and the sign-in flow. Every sign-in, successful or not, is
audited. Messages never say whether a username exists.

The administrative functions at the end (AC-3/AC-4, served by api/routers/accounts.py) pass the gate first: sysadmin
lists, creates, disables/enables and unlocks accounts (`account.list`, `account.create`, `account.update`); secadmin
changes a staff role (`account.role`) and reads the static role policy (`policy.read`, also auditor/auditadmin).
Administrator accounts (sysadmin, secadmin, auditadmin) are never created, nor given or taken a role, through them:
those stay on the host (`healthvault users add`). They never return or log password hashes, TOTP secrets or PHI.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import TYPE_CHECKING, NoReturn

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vault.access import audit_append, gate, ratelimit
from vault.accounts import tokens, totp
from vault.accounts.usernames import normalize_username
from vault.db.models import ROLES, Account, AuthToken
from vault.errors import (
    Conflict,
    InvalidCredentials,
    InvalidInput,
    OtpEnrollmentRequired,
    OtpRequired,
    PasswordChangeRequired,
    WeakPassword,
)
from vault.identity import Identity, RequestContext

if TYPE_CHECKING:
    from vault.runtime import Vault


def get(session: Session, *, account_id: str) -> Account | None:
    return session.get(Account, account_id)


def get_by_username(session: Session, *, username: str) -> Account | None:
    return session.scalar(select(Account).where(Account.username == normalize_username(username)))


def build(vault: Vault, *, username: str, password: str, role: str, patient_id: str | None = None,
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


def create(session: Session, vault: Vault, *, username: str, password: str, role: str, ctx: RequestContext,
           created_by: Identity | None = None, must_change_password: bool = False) -> Account:
    """Create a staff account (the CLI path); audited as account.create."""
    account = build(vault, username=username, password=password, role=role,
                    must_change_password=must_change_password)
    if get_by_username(session, username=account.username) is not None:
        raise Conflict("An account with this username already exists")
    session.add(account)
    actor = created_by or Identity(account_id="cli", role="sysadmin")
    audit_append.append(session, vault, identity=actor, ctx=ctx, action="account.create", outcome="allow",
                     resource_type="account", resource_id=account.id, reason=role)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict("An account with this username already exists") from exc
    return account


def _fail(session: Session, vault: Vault, account: Account | None, name: str | None, ctx: RequestContext,
          reason: str) -> NoReturn:
    """Record a failed sign-in (and a lockout when the threshold is reached), commit, raise the uniform 401."""
    now = vault.clock()
    if account is not None and reason in ("bad-credentials", "bad-otp"):
        # The counter is shared by every server process: count on the locked row, not on what this process read.
        session.refresh(account, with_for_update=True)
    actor = (Identity(account_id=account.id, role=account.role) if account
             else Identity(account_id="unknown:" + (name or "-"), role="anonymous"))
    audit_append.append(session, vault, identity=actor, ctx=ctx, action="login_failed", outcome="deny",
                     resource_type="account", resource_id=account.id if account else None, reason=reason)
    if account is not None and reason in ("bad-credentials", "bad-otp"):
        account.failed_logins = (account.failed_logins or 0) + 1
        if account.failed_logins >= vault.settings.lockout_threshold:
            account.failed_logins = 0
            account.locked_until = now + dt.timedelta(minutes=vault.settings.lockout_minutes)
            audit_append.append(session, vault, identity=actor, ctx=ctx, action="account_locked", outcome="deny",
                             resource_type="account", resource_id=account.id, reason="too-many-failures")
    session.commit()
    raise InvalidCredentials()


def authenticate(session: Session, vault: Vault, *, username: str, password: str, ctx: RequestContext) -> Account:
    """The account behind a username and password, honouring lockout; the same 401 for every failure."""
    try:
        name = normalize_username(username)
    except Exception:  # noqa: BLE001 - a malformed name is just a failed login
        name = None
    account = session.scalar(select(Account).where(Account.username == name)) if name else None
    ok = vault.passwords.verify(account.password_hash if account else None, password)
    now = vault.clock()
    if account is not None and account.locked_until is not None and account.locked_until > now:
        _fail(session, vault, account, name, ctx, "locked")  # even the right password is refused while locked
    if not ok or account is None:
        _fail(session, vault, account, name, ctx, "bad-credentials")
    if not account.is_active:
        _fail(session, vault, account, name, ctx, "inactive")
    return account


def login(session: Session, vault: Vault, *, username: str, password: str, ctx: RequestContext,
          otp: str | None = None) -> tuple[str, int]:
    """Verify the password (and the TOTP code for staff roles, or for anyone who enrolled) and issue a token."""
    ratelimit.check(vault, ctx=ctx, scope="login", target=username.strip().casefold())
    account = authenticate(session, vault, username=username, password=password, ctx=ctx)
    if account.role in totp.ROLES_REQUIRING_TOTP and not account.totp_enabled:
        _refuse_sign_in(session, vault, account, ctx, "otp-not-enrolled")
        raise OtpEnrollmentRequired()
    if account.totp_enabled:  # a patient who turned two-factor on gets it enforced too
        if not otp:
            _refuse_sign_in(session, vault, account, ctx, "otp-missing")
            raise OtpRequired()
        if not totp.check(vault, account, otp):
            _fail(session, vault, account, account.username, ctx, "bad-otp")
    if account.must_change_password or _password_expired(vault, account):
        _refuse_sign_in(session, vault, account, ctx, "password-change-required")
        raise PasswordChangeRequired()
    now = vault.clock()
    account.failed_logins = 0
    account.locked_until = None
    account.last_login_at = now
    token = tokens.issue(session, account=account, now=now, ttl_seconds=vault.settings.token_ttl_seconds)
    audit_append.append(session, vault,
                     identity=Identity(account_id=account.id, role=account.role, patient_id=account.patient_id),
                     ctx=ctx, action="login", outcome="allow", resource_type="account", resource_id=account.id,
                     patient_id=account.patient_id)
    session.commit()
    return token, vault.settings.token_ttl_seconds


def reauthenticate(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, password: str,
                   otp: str | None, action: str, target: gate.Target) -> None:
    """The signed-in person proves again that they hold the account, before a step that cannot be taken back or that
    hands everything over (erasing the account, exporting all of its data): the password, and the TOTP code when the
    account enrolled one. A failure is audited as a denial of `action` on `target` (reason `reauth-failed`),
    committed, and raised: InvalidCredentials (a wrong password also counts toward the lockout, as a failed sign-in
    does) or OtpRequired."""
    account = session.get(Account, identity.account_id)
    try:
        if account is None:
            raise InvalidCredentials()
        authenticate(session, vault, username=account.username, password=password, ctx=ctx)
        if account.totp_enabled:
            if not otp:
                raise OtpRequired()
            if not totp.check(vault, account, otp):
                raise InvalidCredentials()
    except (InvalidCredentials, OtpRequired):
        gate.audit(vault, session, identity=identity, ctx=ctx, action=action, target=target, outcome="deny",
                   reason="reauth-failed")
        session.commit()
        raise


def _refuse_sign_in(session: Session, vault: Vault, account: Account, ctx: RequestContext, reason: str) -> None:
    audit_append.append(session, vault, identity=Identity(account_id=account.id, role=account.role), ctx=ctx,
                     action="login_failed", outcome="deny", resource_type="account", resource_id=account.id,
                     reason=reason)
    session.commit()


def _password_expired(vault: Vault, account: Account) -> bool:
    """Staff passwords expire after `staff_password_max_age_days` (AUTH-2); patients' do not."""
    if account.role == "patient":
        return False
    changed = account.password_changed_at or account.created_at
    return vault.clock() - changed > dt.timedelta(days=vault.settings.staff_password_max_age_days)


def change_password(session: Session, vault: Vault, *, username: str, password: str, new_password: str,
                    otp: str | None, ctx: RequestContext) -> None:
    """Replace the password, proved by the old one and by a TOTP code whenever the account enrolled one.

    Every live session of the account ends with the change (the request itself carries no token)."""
    ratelimit.check(vault, ctx=ctx, scope="password", target=username.strip().casefold())
    account = authenticate(session, vault, username=username, password=password, ctx=ctx)
    if account.totp_enabled and not totp.check(vault, account, otp):  # any role that enrolled, patients too
        _fail(session, vault, account, account.username, ctx, "bad-otp")
    vault.passwords.check(new_password, username=account.username)
    history = json.loads(account.previous_password_hashes or "[]")
    keep = vault.settings.password_history
    if any(vault.passwords.verify(old, new_password) for old in [account.password_hash, *history[-(keep - 1):]]):
        raise WeakPassword(f"The new password must differ from the last {keep}", extra={"reason": "reused"})
    account.previous_password_hashes = json.dumps([*history, account.password_hash][-(keep - 1):])
    account.password_hash = vault.passwords.hash(new_password)
    account.password_changed_at = vault.clock()
    account.must_change_password = False
    revoke_live_tokens(session, account_id=account.id, now=vault.clock())  # every session of the old password ends
    audit_append.append(session, vault, identity=Identity(account_id=account.id, role=account.role), ctx=ctx,
                     action="account.update", outcome="allow", resource_type="account", resource_id=account.id,
                     reason="password-changed")
    session.commit()


def totp_enroll(session: Session, vault: Vault,
                *, username: str, password: str, ctx: RequestContext) -> tuple[str, str]:
    """Start (or restart, while not yet active) TOTP enrolment with the password as proof.

    The first enrolment belongs to the account's holder: while the account still has the initial password an
    administrator set, enrolment is refused (三权分立: whoever set that password must not also hold the second factor).
    """
    ratelimit.check(vault, ctx=ctx, scope="totp", target=username.strip().casefold())
    account = authenticate(session, vault, username=username, password=password, ctx=ctx)
    if account.totp_enabled:
        raise Conflict("Two-factor sign-in is already active for this account")
    if account.must_change_password:
        _refuse_sign_in(session, vault, account, ctx, "initial-password")
        session.commit()
        raise PasswordChangeRequired("Change the initial password first (POST /v1/auth/password), then enrol")
    secret, uri = totp.enroll(vault, account)
    audit_append.append(session, vault, identity=Identity(account_id=account.id, role=account.role), ctx=ctx,
                     action="totp.enroll", outcome="allow", resource_type="account", resource_id=account.id)
    session.commit()
    return secret, uri


def totp_activate(session: Session, vault: Vault,
                  *, username: str, password: str, otp: str, ctx: RequestContext) -> None:
    """Turn TOTP on once the user proves their authenticator produces valid codes."""
    ratelimit.check(vault, ctx=ctx, scope="totp", target=username.strip().casefold())
    account = authenticate(session, vault, username=username, password=password, ctx=ctx)
    if account.totp_enabled or account.totp_secret_enc is None:
        raise Conflict("Enrol first (POST /v1/auth/totp/enroll)")
    if not totp.check(vault, account, otp):
        _fail(session, vault, account, account.username, ctx, "bad-otp")
    account.totp_enabled = True
    revoke_live_tokens(session, account_id=account.id, now=vault.clock())  # sessions from before the second factor
    audit_append.append(session, vault, identity=Identity(account_id=account.id, role=account.role), ctx=ctx,
                     action="totp.activate", outcome="allow", resource_type="account", resource_id=account.id)
    session.commit()


def disable_idle_staff(session: Session, vault: Vault, *, ctx: RequestContext) -> list[str]:
    """AC-2: staff accounts unused for `staff_idle_disable_days` are disabled (their live tokens die with them)."""
    cutoff = vault.clock() - dt.timedelta(days=vault.settings.staff_idle_disable_days)
    idle = session.scalars(select(Account).where(Account.role != "patient", Account.is_active.is_(True))).all()
    disabled = []
    for account in idle:
        if (account.last_login_at or account.created_at) < cutoff:
            account.is_active = False
            audit_append.append(session, vault, identity=Identity(account_id="system:ageing", role="system"), ctx=ctx,
                             action="account.update", outcome="allow", resource_type="account",
                             resource_id=account.id, reason="idle-disabled")
            disabled.append(account.username)
    session.commit()
    return disabled


def logout(session: Session, vault: Vault, *, token: str, identity: Identity, ctx: RequestContext) -> None:
    tokens.revoke(session, token=token, now=vault.clock())
    audit_append.append(session, vault, identity=identity, ctx=ctx, action="logout", outcome="allow",
                        resource_type="account", resource_id=identity.account_id)
    session.commit()


def revoke_live_tokens(session: Session, *, account_id: str, now: dt.datetime) -> None:
    session.execute(update(AuthToken).where(AuthToken.account_id == account_id, AuthToken.revoked_at.is_(None))
                    .values(revoked_at=now))
