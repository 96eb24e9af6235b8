"""The vault's side of auditing: turning an identity and a request into a chained audit event.

Owns mapping vault identities to pseudonyms (under kms's dedicated pseudonym key) and calling `audit.trail.append`
inside the caller's transaction. It must never pass PHI: events carry pseudonyms, roles, codes and random ids only.
There is no switch that turns it off; if the append fails the caller's transaction is rolled back and the request
fails with 503, so nothing is returned.
"""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from audit import trail
from audit.pseudonyms import PURPOSE as PSEUDONYM_PURPOSE
from audit.pseudonyms import pseudonym
from vault.errors import AuditUnavailable
from vault.identity import Identity, RequestContext


def actor_pseudonym(vault, account_id: str) -> str:
    return pseudonym(vault.keys.service_key(PSEUDONYM_PURPOSE), "account", account_id)


def patient_pseudonym(vault, patient_id: str) -> str:
    return pseudonym(vault.keys.service_key(PSEUDONYM_PURPOSE), "patient", patient_id)


def append(session: Session, vault, *, identity: Identity, ctx: RequestContext, action: str, outcome: str,
           resource_type: str, resource_id: str | None = None, patient_id: str | None = None,
           reason: str | None = None, grant_id: str | None = None) -> dict:
    """Append one event in the session's transaction and flush it."""
    key = vault.keys.service_key(PSEUDONYM_PURPOSE)
    event = trail.NewEvent(
        actor=pseudonym(key, "account", identity.account_id),
        actor_role=identity.role,
        action=action,
        outcome=outcome,
        resource_type=resource_type,
        resource_id=resource_id,
        patient=pseudonym(key, "patient", patient_id) if patient_id else None,
        reason=reason,
        grant_id=grant_id,
        request_id=ctx.request_id,
        client_addr=ctx.client_addr,
        user_agent=ctx.user_agent,
    )
    try:
        return trail.append(session, event, now=vault.clock(), chains=vault.settings.effective_audit_chains)
    except SQLAlchemyError as exc:
        session.rollback()
        raise AuditUnavailable() from exc
