"""Grants and break-glass at the edge: `GrantOut` and `SharedRecordOut` are the domain's `sharing.GrantView` and
`sharing.SharedRecord`; the bodies validate input; `BreakGlassOut` answers a claim (an ORM row, no view)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from pydantic import BaseModel, Field

from api.schemas import Input, Instant
from vault.sharing import service as sharing


class GrantIn(Input):
    grantee: str = Field(min_length=1, max_length=256, description="username of a doctor or escort")
    record_ids: list[uuid.UUID] = Field(default_factory=list, max_length=500)
    categories: list[str] = Field(default_factory=list, max_length=5)
    include_future: bool = False
    actions: list[str] = Field(min_length=1, max_length=2)
    purpose: str = Field(min_length=1, max_length=500)
    consult_ref: str | None = Field(default=None, max_length=64)
    not_before: Instant | None = None
    expires_at: Instant


@dataclasses.dataclass(frozen=True)
class GrantOut(sharing.GrantView):
    """A grant as its patient sees it, with the signed receipt."""


@dataclasses.dataclass(frozen=True)
class SharedRecordOut(sharing.SharedRecord):
    """A record shared with the caller, and the grant that shares it."""


class BreakGlassIn(Input):
    patient_id: uuid.UUID
    reason: str = Field(min_length=10, max_length=500)
    otp: str | None = Field(None, max_length=16, description="A fresh code from the doctor's authenticator (step-up)")


class BreakGlassOut(BaseModel):
    claim_id: str
    patient_id: str
    expires_at: dt.datetime
