"""Pydantic v2 schemas of the HTTP contract. Every input model forbids unknown fields (IP-1, PI-1)."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, ConfigDict, Field


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=256)


class RegisterIn(_In):
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=256)
    real_name: str = Field(min_length=1, max_length=64)
    id_number: str = Field(min_length=1, max_length=64)
    phone: str = Field(min_length=1, max_length=32)
    birth_date: dt.date | None = None


class RegisterOut(BaseModel):
    patient_id: str


class LoginIn(_In):
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=256)
    otp: str | None = Field(default=None, max_length=16)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class PatientOut(BaseModel):
    patient_id: str
    real_name: str
    id_number_masked: str
    phone_masked: str
    birth_date: dt.date
    created_at: dt.datetime


class RecordOut(BaseModel):
    record_id: str
    category: str
    label: str
    content_type: str
    size_bytes: int
    created_at: dt.datetime
    title: str | None
    filename: str | None
    sha256: str
    ocr_status: str | None = None
    ocr_error: str | None = None
    lab_results: dict | None = None


class RecordPage(BaseModel):
    items: list[RecordOut]
    next_cursor: str | None


class Health(BaseModel):
    status: str


class AuditEventOut(BaseModel):
    id: int
    chain: int
    seq: int
    time: dt.datetime
    actor: str
    actor_role: str
    action: str
    resource_type: str
    resource_id: str | None
    patient: str | None
    outcome: str
    reason: str | None
    grant_id: str | None
    request_id: str | None
    client_addr: str | None
    user_agent: str | None
    prev_hash: str
    hash: str


class AuditEventPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None


class ExportIn(_In):
    since: dt.datetime | None = None
    until: dt.datetime | None = None


class ExportOut(BaseModel):
    export_id: str
    status: str
    done: int
    total: int
    event_count: int
    error: str | None


class AccessEntryOut(BaseModel):
    event_id: int
    occurred_at: dt.datetime
    action: str
    outcome: str
    actor_role: str
    actor_name: str
    resource_type: str
    resource_id: str | None
    grant_id: str | None
    reason: str | None


class AccessLogPage(BaseModel):
    items: list[AccessEntryOut]
    next_cursor: str | None


class GrantIn(_In):
    grantee: str = Field(min_length=1, max_length=256, description="username of a doctor or escort")
    record_ids: list[uuid.UUID] = Field(default_factory=list, max_length=500)
    categories: list[str] = Field(default_factory=list, max_length=5)
    include_future: bool = False
    actions: list[str] = Field(min_length=1, max_length=2)
    purpose: str = Field(min_length=1, max_length=500)
    consult_ref: str | None = Field(default=None, max_length=64)
    not_before: dt.datetime | None = None
    expires_at: dt.datetime


class GrantOut(BaseModel):
    grant_id: str
    patient_id: str
    grantee_id: str
    grantee_username: str
    grantee_role: str
    record_ids: list[str]
    categories: list[str]
    include_future: bool
    actions: list[str]
    purpose: str | None
    consult_ref: str | None
    not_before: dt.datetime
    expires_at: dt.datetime
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    active: bool
    receipt: dict


class SharedRecordOut(BaseModel):
    record_id: str
    patient_id: str
    category: str
    content_type: str
    created_at: dt.datetime
    grant_id: str
    expires_at: dt.datetime


class BreakGlassIn(_In):
    patient_id: uuid.UUID
    reason: str = Field(min_length=10, max_length=500)


class BreakGlassOut(BaseModel):
    claim_id: str
    patient_id: str
    expires_at: dt.datetime


class TotpEnrollIn(_In):
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=256)


class TotpActivateIn(TotpEnrollIn):
    otp: str = Field(min_length=6, max_length=8)


class TotpEnrollOut(BaseModel):
    secret: str
    otpauth_uri: str


class PasswordChangeIn(_In):
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=1, max_length=256)
    otp: str | None = Field(default=None, max_length=16)


class LabCorrectionIn(_In):
    row: int = Field(ge=0, le=1000)
    field: str = Field(max_length=16)
    value: str | float | None = None


class TrendPointOut(BaseModel):
    record_id: str
    at: str
    value: str | None
    value_num: float | None
    unit: str | None
    flag: str | None
