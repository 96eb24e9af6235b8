"""The vault's side of auditing: turning an identity and a request into a chained audit event.

Owns mapping vault identities to pseudonyms (under kms's dedicated pseudonym key) and calling `audit.trail.append`
inside the caller's transaction. It must never pass PHI: events carry pseudonyms, roles, codes and random ids only;
a patient is named by its pseudonym wherever it appears (the event's patient, and the resource when a patient is
the resource), never by its raw id.
There is no switch that turns it off; if the append fails the caller's transaction is rolled back and the request
fails with 503, so nothing is returned.

Suites: with crypto_suite "sm" the pseudonyms are HMAC-SM3 under the "sm:pseudonym" key and events are format 2
(SM3 chains); with "aes", HMAC-SHA-256 under "pseudonym" and format 1. A person's pseudonym therefore changes when a
vault switches suite; `*_pseudonyms` give every form this vault has used, for lookups across the switch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from audit import trail
from audit.pseudonyms import PURPOSE as PSEUDONYM_PURPOSE
from audit.pseudonyms import pseudonym
from kms import suites
from vault import fields
from vault.errors import AuditUnavailable
from vault.identity import Identity, RequestContext

if TYPE_CHECKING:
    from vault.runtime import Vault


def _pseudonym_in(vault: Vault, suite: int, kind: str, value: str) -> str:
    key = vault.keys.service_key(suites.purpose(PSEUDONYM_PURPOSE, suite))
    return pseudonym(key, kind, value, sm3=suite == suites.SM4_GCM)


def keyed_pseudonym(vault: Vault, kind: str, value: str) -> str:
    """A stable, unlinkable name for `value` of `kind` under the current pseudonym key (rate-limit buckets)."""
    return _pseudonym_in(vault, fields.suite_of(vault), kind, value)


def actor_pseudonym(vault: Vault, account_id: str) -> str:
    return _pseudonym_in(vault, fields.suite_of(vault), "account", account_id)


def patient_pseudonym(vault: Vault, patient_id: str) -> str:
    return _pseudonym_in(vault, fields.suite_of(vault), "patient", patient_id)


def actor_pseudonyms(vault: Vault, account_id: str) -> list[str]:
    """Every pseudonym the account has had in this vault's trail (the current one first)."""
    return [_pseudonym_in(vault, s, "account", account_id) for s in fields.keyed_suites(vault, PSEUDONYM_PURPOSE)]


def patient_pseudonyms(vault: Vault, patient_id: str) -> list[str]:
    return [_pseudonym_in(vault, s, "patient", patient_id) for s in fields.keyed_suites(vault, PSEUDONYM_PURPOSE)]


def event_format(vault: Vault) -> int:
    """The audit event format new events get: 1 (SHA-256) for "aes", 2 (SM3) for "sm"."""
    return trail.SM_EVENT_FORMAT if fields.suite_of(vault) == suites.SM4_GCM else trail.EVENT_FORMAT


def append(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, action: str, outcome: str,
           resource_type: str, resource_id: str | None = None, patient_id: str | None = None,
           reason: str | None = None, grant_id: str | None = None) -> dict[str, Any] | None:
    """Append one event in the session's transaction and flush it; returns the exported view, or None where the read
    fast path keeps the event as a value until its batch commits (vault/db/fastpath)."""
    suite = fields.suite_of(vault)
    key, sm3 = vault.keys.service_key(suites.purpose(PSEUDONYM_PURPOSE, suite)), suite == suites.SM4_GCM
    event = trail.NewEvent(
        actor=pseudonym(key, "account", identity.account_id, sm3=sm3),
        actor_role=identity.role,
        action=action,
        outcome=outcome,
        resource_type=resource_type,
        # A patient as the resource is named by its pseudonym too: no raw patient id in any field of the trail.
        resource_id=pseudonym(key, "patient", resource_id, sm3=sm3) if resource_type == "patient" and resource_id
        else resource_id,
        patient=pseudonym(key, "patient", patient_id, sm3=sm3) if patient_id else None,
        reason=reason,
        grant_id=grant_id,
        request_id=ctx.request_id,
        client_addr=ctx.client_addr,
        user_agent=ctx.user_agent,
    )
    try:
        return trail.append(session, event, now=vault.clock(), chains=vault.settings.effective_audit_chains,
                            event_format=event_format(vault))
    except SQLAlchemyError as exc:
        session.rollback()
        raise AuditUnavailable() from exc
