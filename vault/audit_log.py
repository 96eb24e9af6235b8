"""Append-only audit events (plain table; the tamper-evident chain is layered on in the audit issue).

Owns writing one event row inside the caller's transaction and turning ids into keyed pseudonyms. It must never be
given PHI: events carry pseudonyms, roles, action names, resource ids (random UUIDs) and short reason codes only.
There is no switch that turns it off; if the append fails, the caller's transaction fails with it.
"""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from vault.errors import AuditUnavailable
from vault.identity import Identity, RequestContext
from vault.models import AuditEvent

PSEUDONYM_PURPOSE = "pseudonym"

ACTIONS = frozenset(
    {
        "login", "login_failed", "logout", "account.create", "patient.register", "patient.read",
        "record.create", "record.read", "record.list", "record.download", "record.delete",
    }
)
OUTCOMES = frozenset({"allow", "deny", "error"})


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """Stable keyed pseudonym; without the key it cannot be linked back to the id."""
    return hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()[:32]


def append(
    session: Session,
    *,
    pseudonym_key: bytes,
    now,
    identity: Identity,
    ctx: RequestContext,
    action: str,
    outcome: str,
    resource_type: str,
    resource_id: str | None = None,
    patient_id: str | None = None,
    reason: str | None = None,
) -> AuditEvent:
    """Add one event to the session and flush it, so a failing append fails the caller before any data is returned."""
    if action not in ACTIONS or outcome not in OUTCOMES:
        raise ValueError("unknown audit action or outcome")
    event = AuditEvent(
        occurred_at=now,
        actor=pseudonym(pseudonym_key, "account", identity.account_id),
        actor_role=identity.role,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        patient_pseudonym=pseudonym(pseudonym_key, "patient", patient_id) if patient_id else None,
        outcome=outcome,
        reason=reason,
        request_id=ctx.request_id,
        client_addr=ctx.client_addr,
    )
    try:
        session.add(event)
        session.flush()
    except SQLAlchemyError as exc:
        session.rollback()
        raise AuditUnavailable() from exc
    return event
