"""Account administration over HTTP (AC-3 separation of duties, AC-4 audited role changes).

Owns only the HTTP shape; who may do what is decided by vault.accounts through the gate and consent/policy.csv, and
every call is audited there: sysadmin lists, creates (doctor, escort, auditor; must change the password at first
sign-in), disables/enables and unlocks accounts; secadmin changes a staff role and reads the role policy (auditor and
auditadmin may read it too). Administrator accounts stay CLI-only on the host. Never returns password hashes, TOTP
secrets or PHI.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Ctx, CurrentIdentity, VaultDep
from api.schemas import contract
from api.schemas.accounts import (
    AccountCreateIn,
    AccountOut,
    AccountPage,
    AccountPatchIn,
    AccountRoleIn,
    PolicyOut,
    PolicyRuleOut,
)
from vault.accounts import admin as accounts

router = APIRouter(tags=["accounts"])


@router.get("/v1/accounts", response_model=AccountPage)
def list_accounts(identity: CurrentIdentity, vault: VaultDep, ctx: Ctx,
                  limit: Annotated[int, Query(ge=1, le=500)] = 100,
                  after: Annotated[str | None, Query(max_length=64)] = None) -> AccountPage:
    """Staff and patient accounts ordered by username; `next_cursor` goes into `after` for the next page."""
    with vault.session() as session:
        views, cursor = accounts.list_accounts(session, vault, identity=identity, ctx=ctx, limit=limit, after=after)
    return AccountPage(items=[contract(AccountOut, v) for v in views], next_cursor=cursor)


@router.post("/v1/accounts", status_code=201, response_model=AccountOut)
def create_account(body: AccountCreateIn, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> AccountOut:
    with vault.session() as session:
        return contract(AccountOut, accounts.create_staff(session, vault, identity=identity, ctx=ctx,
                                                          username=body.username, password=body.password,
                                                          role=body.role))


@router.patch("/v1/accounts/{account_id}", response_model=AccountOut)
def patch_account(account_id: str, body: AccountPatchIn, identity: CurrentIdentity, vault: VaultDep,
                  ctx: Ctx) -> AccountOut:
    """`{"active": false}` disables and revokes the account's live tokens at once; `true` enables it again."""
    with vault.session() as session:
        return contract(AccountOut, accounts.set_active(session, vault, identity=identity, ctx=ctx,
                                                        account_id=account_id, active=body.active))


@router.post("/v1/accounts/{account_id}/unlock", response_model=AccountOut)
def unlock_account(account_id: str, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> AccountOut:
    with vault.session() as session:
        return contract(AccountOut, accounts.unlock(session, vault, identity=identity, ctx=ctx,
                                                    account_id=account_id))


@router.put("/v1/accounts/{account_id}/role", response_model=AccountOut)
def change_role(account_id: str, body: AccountRoleIn, identity: CurrentIdentity, vault: VaultDep,
                ctx: Ctx) -> AccountOut:
    """secadmin: doctor, escort and auditor only; audited as `account.role` with reason "old->new"."""
    with vault.session() as session:
        return contract(AccountOut, accounts.change_role(session, vault, identity=identity, ctx=ctx,
                                                         account_id=account_id, role=body.role))


@router.get("/v1/policy", response_model=PolicyOut)
def get_policy(identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> PolicyOut:
    """The static role policy (consent/policy.csv); patient access comes only from ownership, grants and break-glass."""
    with vault.session() as session:
        rows = accounts.role_policy(session, vault, identity=identity, ctx=ctx)
    return PolicyOut(source="consent/policy.csv",
                     items=[PolicyRuleOut(role=r, object=o, action=a) for r, o, a in rows])
