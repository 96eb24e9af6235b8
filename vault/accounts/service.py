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

import dataclasses
import datetime as dt
import json
import uuid

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from consent import engine as consent_engine
from vault.access import audit_append, gate
from vault.accounts import tokens, totp
from vault.accounts.usernames import normalize_username
from vault.db.models import ROLES, Account, AuthToken
from vault.errors import (
    Conflict,
    Forbidden,
    InvalidCredentials,
    InvalidInput,
    NotFound,
    OtpEnrollmentRequired,
    OtpRequired,
    PasswordChangeRequired,
    WeakPassword,
)
from vault.identity import Identity, RequestContext


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
    audit_append.append(session, vault, identity=actor, ctx=ctx, action="account.create", outcome="allow",
                     resource_type="account", resource_id=account.id, reason=role)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict("An account with this username already exists") from exc
    return account


def _fail(session: Session, vault, account: Account | None, name: str | None, ctx: RequestContext,
          reason: str) -> None:
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


def authenticate(session: Session, vault, *, username: str, password: str, ctx: RequestContext) -> Account:
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


def login(session: Session, vault, *, username: str, password: str, ctx: RequestContext,
          otp: str | None = None) -> tuple[str, int]:
    """Verify the password (and the TOTP code for staff roles, or for anyone who enrolled) and issue a token."""
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


def _refuse_sign_in(session: Session, vault, account: Account, ctx: RequestContext, reason: str) -> None:
    audit_append.append(session, vault, identity=Identity(account_id=account.id, role=account.role), ctx=ctx,
                     action="login_failed", outcome="deny", resource_type="account", resource_id=account.id,
                     reason=reason)
    session.commit()


def _password_expired(vault, account: Account) -> bool:
    """Staff passwords expire after `staff_password_max_age_days` (AUTH-2); patients' do not."""
    if account.role == "patient":
        return False
    changed = account.password_changed_at or account.created_at
    return vault.clock() - changed > dt.timedelta(days=vault.settings.staff_password_max_age_days)


def change_password(session: Session, vault, *, username: str, password: str, new_password: str,
                    otp: str | None, ctx: RequestContext) -> None:
    """Replace the password (proved by the old one, and the TOTP code where the role requires it)."""
    account = authenticate(session, vault, username=username, password=password, ctx=ctx)
    if account.role in totp.ROLES_REQUIRING_TOTP and account.totp_enabled and not totp.check(vault, account, otp):
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
    audit_append.append(session, vault, identity=Identity(account_id=account.id, role=account.role), ctx=ctx,
                     action="account.update", outcome="allow", resource_type="account", resource_id=account.id,
                     reason="password-changed")
    session.commit()


def totp_enroll(session: Session, vault, *, username: str, password: str, ctx: RequestContext) -> tuple[str, str]:
    """Start (or restart, while not yet active) TOTP enrolment with the password as proof."""
    account = authenticate(session, vault, username=username, password=password, ctx=ctx)
    if account.totp_enabled:
        raise Conflict("Two-factor sign-in is already active for this account")
    secret, uri = totp.enroll(vault, account)
    audit_append.append(session, vault, identity=Identity(account_id=account.id, role=account.role), ctx=ctx,
                     action="totp.enroll", outcome="allow", resource_type="account", resource_id=account.id)
    session.commit()
    return secret, uri


def totp_activate(session: Session, vault, *, username: str, password: str, otp: str, ctx: RequestContext) -> None:
    """Turn TOTP on once the user proves their authenticator produces valid codes."""
    account = authenticate(session, vault, username=username, password=password, ctx=ctx)
    if account.totp_enabled or account.totp_secret_enc is None:
        raise Conflict("Enrol first (POST /v1/auth/totp/enroll)")
    if not totp.check(vault, account, otp):
        _fail(session, vault, account, account.username, ctx, "bad-otp")
    account.totp_enabled = True
    audit_append.append(session, vault, identity=Identity(account_id=account.id, role=account.role), ctx=ctx,
                     action="totp.activate", outcome="allow", resource_type="account", resource_id=account.id)
    session.commit()


def disable_idle_staff(session: Session, vault, *, ctx: RequestContext) -> list[str]:
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


def logout(session: Session, vault, *, token: str, identity: Identity, ctx: RequestContext) -> None:
    tokens.revoke(session, token=token, now=vault.clock())
    audit_append.append(session, vault, identity=identity, ctx=ctx, action="logout", outcome="allow", resource_type="account",
                     resource_id=identity.account_id)
    session.commit()


# --- administrative API (AC-3 separation of duties, AC-4 audited policy changes) -------------------------------------
ADMIN_ROLES = ("sysadmin", "secadmin", "auditadmin")  # created and re-roled only on the host (CLI), never over HTTP
ASSIGNABLE_ROLES = ("doctor", "escort", "auditor")  # what the API may create and move a staff account between
_ACCOUNT = gate.Target("account", None, None)


@dataclasses.dataclass(frozen=True)
class AccountView:
    """What an administrator sees of an account: no password hash, TOTP secret, patient link or PHI."""

    id: str
    username: str
    role: str
    active: bool
    totp_enabled: bool
    locked: bool
    must_change_password: bool
    created_at: dt.datetime
    last_login_at: dt.datetime | None


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    return moment.replace(tzinfo=dt.UTC) if moment is not None and moment.tzinfo is None else moment


def _account_view(account: Account, now: dt.datetime) -> AccountView:
    locked_until = _aware(account.locked_until)
    return AccountView(id=account.id, username=account.username, role=account.role, active=bool(account.is_active),
                       totp_enabled=bool(account.totp_enabled), locked=locked_until is not None and locked_until > now,
                       must_change_password=bool(account.must_change_password),
                       created_at=_aware(account.created_at), last_login_at=_aware(account.last_login_at))


def _target(account_id: str) -> gate.Target:
    return gate.Target("account", account_id, None)


def _refuse(session: Session, vault, *, identity: Identity, ctx: RequestContext, action: str, target: gate.Target,
            reason: str, detail: str) -> None:
    """Audit a refusal the role policy alone did not catch (an admin role over HTTP), commit it, raise 403."""
    gate.audit(vault, session, identity=identity, ctx=ctx, action=action, target=target, outcome="deny", reason=reason)
    session.commit()
    raise Forbidden(detail, extra={"reason": reason})


def _existing(session: Session, vault, *, identity: Identity, ctx: RequestContext, action: str,
              target: gate.Target) -> Account:
    """The target account of a permitted caller, or 404 (the attempt audited as a denial)."""
    account = session.get(Account, target.resource_id)
    if account is None:
        gate.audit(vault, session, identity=identity, ctx=ctx, action=action, target=target, outcome="deny",
                   reason="not-found")
        session.commit()
        raise NotFound()
    return account


def _revoke_live_tokens(session: Session, *, account_id: str, now: dt.datetime) -> None:
    session.execute(update(AuthToken).where(AuthToken.account_id == account_id, AuthToken.revoked_at.is_(None))
                    .values(revoked_at=now))


def list_accounts(session: Session, vault, *, identity: Identity, ctx: RequestContext, limit: int = 100,
                  after: str | None = None) -> tuple[list[AccountView], str | None]:
    """Staff and patient accounts by username (keyset: `after` is the last username seen); sysadmin only."""
    gate.enter(vault, session, identity=identity, ctx=ctx, action="account.list", target=_ACCOUNT)
    query = select(Account).order_by(Account.username).limit(limit + 1)
    if after:
        query = query.where(Account.username > after)
    rows = list(session.scalars(query))
    session.commit()
    now = vault.clock()
    more = len(rows) > limit
    rows = rows[:limit]
    return [_account_view(a, now) for a in rows], (rows[-1].username if more else None)


def create_staff(session: Session, vault, *, identity: Identity, ctx: RequestContext, username: str, password: str,
                 role: str) -> AccountView:
    """A doctor, escort or auditor account whose initial password must be changed at first sign-in (like the CLI).

    Administrator accounts are refused here (403, audited): they are created on the host only, so a stolen sysadmin
    token cannot mint a second administrator. Patients register themselves (POST /v1/patients/register)."""
    gate.enter(vault, session, identity=identity, ctx=ctx, action="account.create", target=_ACCOUNT, audit_allow=False)
    if role in ADMIN_ROLES:
        _refuse(session, vault, identity=identity, ctx=ctx, action="account.create", target=_ACCOUNT,
                reason="admin-role", detail="Administrator accounts are created on the host (healthvault users add)")
    if role not in ASSIGNABLE_ROLES:
        raise InvalidInput("The role must be one of: " + ", ".join(ASSIGNABLE_ROLES), extra={"reason": "role"})
    account = create(session, vault, username=username, password=password, role=role, ctx=ctx, created_by=identity,
                     must_change_password=True)
    return _account_view(account, vault.clock())


def set_active(session: Session, vault, *, identity: Identity, ctx: RequestContext, account_id: str,
               active: bool) -> AccountView:
    """Disable (every live token of the account is revoked in the same transaction) or enable an account."""
    target = _target(account_id)
    gate.enter(vault, session, identity=identity, ctx=ctx, action="account.update", target=target, audit_allow=False)
    account = _existing(session, vault, identity=identity, ctx=ctx, action="account.update", target=target)
    if not active and account.id == identity.account_id:
        raise Conflict("An administrator cannot disable their own account", extra={"reason": "self"})
    now = vault.clock()
    account.is_active = active
    if not active:
        _revoke_live_tokens(session, account_id=account.id, now=now)
    gate.audit(vault, session, identity=identity, ctx=ctx, action="account.update", target=target, outcome="allow",
               reason="enabled" if active else "disabled")
    session.commit()
    return _account_view(account, now)


def unlock(session: Session, vault, *, identity: Identity, ctx: RequestContext, account_id: str) -> AccountView:
    """Clear a sign-in lockout (and the failure count) before it runs out."""
    target = _target(account_id)
    gate.enter(vault, session, identity=identity, ctx=ctx, action="account.update", target=target, audit_allow=False)
    account = _existing(session, vault, identity=identity, ctx=ctx, action="account.update", target=target)
    account.locked_until = None
    account.failed_logins = 0
    gate.audit(vault, session, identity=identity, ctx=ctx, action="account.update", target=target, outcome="allow",
               reason="unlocked")
    session.commit()
    return _account_view(account, vault.clock())


def change_role(session: Session, vault, *, identity: Identity, ctx: RequestContext, account_id: str,
                role: str) -> AccountView:
    """Move a staff account between doctor, escort and auditor (secadmin); audited as `account.role` "old->new".

    An account holds exactly one role, so a change replaces it; admin roles and patients are never moved (403,
    audited). The account's live tokens are revoked: a session started under one role never continues under another.
    """
    target = _target(account_id)
    gate.enter(vault, session, identity=identity, ctx=ctx, action="account.role", target=target, audit_allow=False)
    if role not in ROLES:
        raise InvalidInput("Unknown role", extra={"reason": "role"})
    account = _existing(session, vault, identity=identity, ctx=ctx, action="account.role", target=target)
    old = account.role
    if old not in ASSIGNABLE_ROLES or role not in ASSIGNABLE_ROLES:
        _refuse(session, vault, identity=identity, ctx=ctx, action="account.role", target=target,
                reason=f"{old}->{role}", detail="Only doctor, escort and auditor roles can be changed here")
    now = vault.clock()
    if role != old:
        account.role = role
        _revoke_live_tokens(session, account_id=account.id, now=now)
    gate.audit(vault, session, identity=identity, ctx=ctx, action="account.role", target=target, outcome="allow",
               reason=f"{old}->{role}")
    session.commit()
    return _account_view(account, now)


def role_policy(session: Session, vault, *, identity: Identity, ctx: RequestContext) -> list[tuple[str, str, str]]:
    """The static role policy (consent/policy.csv) as (role, object, action) rows, for a reviewer."""
    gate.enter(vault, session, identity=identity, ctx=ctx, action="policy.read",
               target=gate.Target("policy", None, None))
    session.commit()
    return [(p[0].removeprefix("role:"), p[2], p[3]) for p in consent_engine.ROLE_POLICIES]
