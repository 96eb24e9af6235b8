"""Account administration at the edge: the bodies validate input; `AccountOut` is the domain's
`vault.accounts.admin.AccountView` (never a password hash, TOTP secret, patient link or any PHI)."""

from __future__ import annotations

import dataclasses

from pydantic import BaseModel, Field, StrictBool

from api.schemas import Input
from vault.accounts import admin as accounts


class AccountCreateIn(Input):
    """A staff account made over the API: doctor, escort or auditor; admin roles are CLI-only (403)."""

    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=256)
    role: str = Field(min_length=1, max_length=16)


class AccountPatchIn(Input):
    active: StrictBool


class AccountRoleIn(Input):
    role: str = Field(min_length=1, max_length=16)


@dataclasses.dataclass(frozen=True)
class AccountOut(accounts.AccountView):
    """Never a password hash, TOTP secret, patient link or any PHI."""


class AccountPage(BaseModel):
    items: list[AccountOut]
    next_cursor: str | None


class PolicyRuleOut(BaseModel):
    role: str
    object: str
    action: str


class PolicyOut(BaseModel):
    source: str
    items: list[PolicyRuleOut]
