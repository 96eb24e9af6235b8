"""The audit trail at the edge.

`AccessEntryOut` is the domain's `audit_trail.AccessEntry`. `AuditEventOut` is the published shape of a stored audit
event (an ORM row of audit/models.py, whose column names differ: `chain_id` → `chain`, `occurred_at` → `time`,
`patient_pseudonym` → `patient`); `ExportOut` is what a client may see of an export job (never its path or range).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from pydantic import BaseModel

from api.schemas import Input, Instant
from vault.auditing import trail as audit_trail


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


class ExportIn(Input):
    since: Instant | None = None
    until: Instant | None = None


class ExportOut(BaseModel):
    export_id: str
    status: str
    done: int
    total: int
    event_count: int
    error: str | None


@dataclasses.dataclass(frozen=True)
class AccessEntryOut(audit_trail.AccessEntry):
    """One access to the patient's own data: who (role and name), what, under which grant or reason."""


@dataclasses.dataclass(frozen=True)
class AuditPublicKeyOut(audit_trail.PublicKey):
    """The verifier key that signs the trail's checkpoints and exports: pin it (`healthvault audit verify --key`)."""


class AccessLogPage(BaseModel):
    items: list[AccessEntryOut]
    next_cursor: str | None
