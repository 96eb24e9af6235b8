"""Pydantic v2 schemas of the HTTP contract. Every input model forbids unknown fields (IP-1, PI-1)."""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=256)


class ConsentsIn(_In):
    """Separate consent per item on the notice version the client showed; an omitted item is not given (at
    registration) or unchanged (POST /v1/patients/me/consents)."""

    notice_version: str | None = Field(default=None, min_length=1, max_length=32)
    health_data: StrictBool | None = None
    id_number: StrictBool | None = None
    ocr: StrictBool | None = None


class RegisterIn(_In):
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=256)
    real_name: str = Field(min_length=1, max_length=64)
    id_number: str = Field(min_length=1, max_length=64)
    phone: str = Field(min_length=1, max_length=32)
    birth_date: dt.date | None = None
    # PIPL-1: separate consents against the privacy notice (GET /v1/privacy-notice); missing → 422 consent-required.
    consents: ConsentsIn | None = None


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
    otp: str | None = Field(None, max_length=16, description="A fresh code from the doctor's authenticator (step-up)")


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


class NoticeSectionOut(BaseModel):
    item: str
    required: bool
    title: dict[str, str]
    text: dict[str, str]


class NoticeOut(BaseModel):
    version: str
    hash: str = Field(description="SHA-256 (hex) of the notice file; stored with every consent")
    effective_date: str | None = None
    title: dict[str, str]
    summary: dict[str, str] | None = None
    sections: list[NoticeSectionOut]
    rights: dict[str, str] | None = None


class ConsentItemOut(BaseModel):
    item: str
    given: bool
    notice_version: str
    notice_hash: str
    recorded_at: dt.datetime
    on_current_notice: bool


class ConsentStateOut(BaseModel):
    notice_version: str
    notice_hash: str
    up_to_date: bool = Field(description="both required items given on the current notice")
    missing: list[str]
    ocr: bool = Field(description="lab sheets are read by OCR")
    items: dict[str, ConsentItemOut | None]
    history: list[ConsentItemOut]


class ErasureIn(_In):
    password: str = Field(min_length=1, max_length=256)
    otp: str | None = Field(default=None, max_length=16)


class ErasureOut(BaseModel):
    erased: bool
    patient_pseudonym: str
    key_versions_destroyed: int
    records_deleted: int
    grants_revoked: int


class ExtractionOut(BaseModel):
    record_id: str
    ocr_status: str


class RootVersionOut(BaseModel):
    version: int
    current: bool
    patient_keks: int = Field(description="patient KEK versions this root version wraps")
    service_keys: int


class KekVersionOut(BaseModel):
    version: int
    keks: int = Field(description="patients whose KEK has this version")
    deks: int = Field(description="wrapped DEKs in the data database that name this KEK version")


class RewrapJobOut(BaseModel):
    job_id: str
    status: str
    phase: str
    total: int
    scanned: int
    rewrapped: int
    failed: int
    started_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None


class KeyStatusOut(BaseModel):
    provider: str
    suite: int
    current_root_version: int
    root_versions: list[RootVersionOut]
    kek_versions: list[KekVersionOut]
    keks_under_old_root: int
    service_keys_under_old_root: int
    deks_under_old_kek: int
    deks_unreadable: int
    pending_rotations: int
    rewrap_job: RewrapJobOut | None


class RotationRequestIn(_In):
    target: str = Field(default="root", pattern="^root$", description="only root rotations need two people")


class RotationOut(BaseModel):
    request_id: str
    target: str
    status: str = Field(description="pending | approved | executing | executed | expired | failed")
    requested_by: str = Field(description="account id of the requesting secadmin")
    requested_at: dt.datetime
    approved_by: str | None
    approved_at: dt.datetime | None
    executed_at: dt.datetime | None
    new_version: int | None


class RotationPage(BaseModel):
    items: list[RotationOut]


class AccountCreateIn(_In):
    """A staff account made over the API: doctor, escort or auditor; admin roles are CLI-only (403)."""

    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=256)
    role: str = Field(min_length=1, max_length=16)


class AccountPatchIn(_In):
    active: StrictBool


class AccountRoleIn(_In):
    role: str = Field(min_length=1, max_length=16)


class AccountOut(BaseModel):
    """Never a password hash, TOTP secret, patient link or any PHI."""

    id: str
    username: str
    role: str
    active: bool
    totp_enabled: bool
    locked: bool
    must_change_password: bool
    created_at: dt.datetime
    last_login_at: dt.datetime | None


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
