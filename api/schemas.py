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
