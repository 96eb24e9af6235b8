"""Pydantic v2 schemas of the HTTP contract. Every input model forbids unknown fields (IP-1, PI-1)."""

from __future__ import annotations

import datetime as dt

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
    content_type: str
    size_bytes: int
    created_at: dt.datetime
    title: str | None
    filename: str | None
    sha256: str


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
