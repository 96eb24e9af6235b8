"""Staff administration over HTTP, kept apart by role (三权分立; AC-3, AC-4).

Owns what a sysadmin may do to staff accounts (list, create doctor/escort/auditor accounts, disable, enable, unlock)
and what a secadmin may do (move an account between doctor, escort and auditor; read the role policy). Every call
passes the gate and every change, allowed or refused, is audited. Patients and administrator accounts are out of
reach here: administrators are created on the host (`healthvault users add`), patients register themselves.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING, overload

from sqlalchemy import select
from sqlalchemy.orm import Session

from consent import engine as consent_engine
from vault.access import gate
from vault.accounts import service as accounts
from vault.db.models import ROLES, Account
from vault.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
)
from vault.identity import Identity, RequestContext

if TYPE_CHECKING:
    from vault.runtime import Vault

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


@overload
def _aware(moment: dt.datetime) -> dt.datetime: ...
@overload
def _aware(moment: dt.datetime | None) -> dt.datetime | None: ...
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


def _refuse(session: Session, vault: Vault,
            *, identity: Identity, ctx: RequestContext, action: str, target: gate.Target,
            reason: str, detail: str) -> None:
    """Audit a refusal the role policy alone did not catch (an admin role over HTTP), commit it, raise 403."""
    gate.audit(vault, session, identity=identity, ctx=ctx, action=action, target=target, outcome="deny", reason=reason)
    session.commit()
    raise Forbidden(detail, extra={"reason": reason})


def _existing(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, action: str,
              target: gate.Target, managed_only: bool = True) -> Account:
    """The target account of a permitted caller, or 404 (the attempt audited as a denial).

    With `managed_only` (the sysadmin's verbs) only doctor, escort and auditor accounts are found: a patient or an
    administrator account answers exactly as an unknown id does (audited `not-managed`), so the sysadmin can neither
    act on nor probe them."""
    account = session.get(Account, target.resource_id)
    if account is None or (managed_only and account.role not in ASSIGNABLE_ROLES):
        gate.audit(vault, session, identity=identity, ctx=ctx, action=action, target=target, outcome="deny",
                   reason="not-found" if account is None else "not-managed")
        session.commit()
        raise NotFound()
    return account


def list_accounts(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, limit: int = 100,
                  after: str | None = None) -> tuple[list[AccountView], str | None]:
    """The staff accounts a sysadmin manages (doctor, escort, auditor) by username (keyset: `after` is the last
    username seen). Patients and administrators are never listed: 三权分立 keeps them out of the sysadmin's reach."""
    gate.enter(vault, session, identity=identity, ctx=ctx, action="account.list", target=_ACCOUNT)
    query = select(Account).where(Account.role.in_(ASSIGNABLE_ROLES)).order_by(Account.username).limit(limit + 1)
    if after:
        query = query.where(Account.username > after)
    rows = list(session.scalars(query))
    session.commit()
    now = vault.clock()
    more = len(rows) > limit
    rows = rows[:limit]
    return [_account_view(a, now) for a in rows], (rows[-1].username if more else None)


def create_staff(session: Session, vault: Vault,
                 *, identity: Identity, ctx: RequestContext, username: str, password: str,
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
    account = accounts.create(session, vault, username=username, password=password, role=role, ctx=ctx,
                              created_by=identity, must_change_password=True)
    return _account_view(account, vault.clock())


def set_active(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, account_id: str,
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
        accounts.revoke_live_tokens(session, account_id=account.id, now=now)
    gate.audit(vault, session, identity=identity, ctx=ctx, action="account.update", target=target, outcome="allow",
               reason="enabled" if active else "disabled")
    session.commit()
    return _account_view(account, now)


def unlock(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, account_id: str) -> AccountView:
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


def change_role(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, account_id: str,
                role: str) -> AccountView:
    """Move a staff account between doctor, escort and auditor (secadmin); audited as `account.role` "old->new".

    An account holds exactly one role, so a change replaces it; admin roles and patients are never moved (403,
    audited). The account's live tokens are revoked: a session started under one role never continues under another.
    """
    target = _target(account_id)
    gate.enter(vault, session, identity=identity, ctx=ctx, action="account.role", target=target, audit_allow=False)
    if role not in ROLES:
        raise InvalidInput("Unknown role", extra={"reason": "role"})
    account = _existing(session, vault, identity=identity, ctx=ctx, action="account.role", target=target,
                        managed_only=False)  # other roles are refused with their old->new pair below
    old = account.role
    if old not in ASSIGNABLE_ROLES or role not in ASSIGNABLE_ROLES:
        _refuse(session, vault, identity=identity, ctx=ctx, action="account.role", target=target,
                reason=f"{old}->{role}", detail="Only doctor, escort and auditor roles can be changed here")
    now = vault.clock()
    if role != old:
        account.role = role
        accounts.revoke_live_tokens(session, account_id=account.id, now=now)
    gate.audit(vault, session, identity=identity, ctx=ctx, action="account.role", target=target, outcome="allow",
               reason=f"{old}->{role}")
    session.commit()
    return _account_view(account, now)


def role_policy(session: Session, vault: Vault,
                *, identity: Identity, ctx: RequestContext) -> list[tuple[str, str, str]]:
    """The static role policy (consent/policy.csv) as (role, object, action) rows, for a reviewer."""
    gate.enter(vault, session, identity=identity, ctx=ctx, action="policy.read",
               target=gate.Target("policy", None, None))
    session.commit()
    return [(p[0].removeprefix("role:"), p[2], p[3]) for p in consent_engine.ROLE_POLICIES]
