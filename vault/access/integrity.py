"""Integrity at rest of what authorisation reads (COMPLIANCE INT-1): the vault's side of `consent.integrity`.

Owns: the key lookup the decision's check uses (`key_for`: the `authz-integrity` service key of the configured suite,
and of another suite only if this vault has that key), sealing a grant or break-glass row when it is written or
withdrawn, and the alarm when a check fails — an `alert.raised` event (reason `integrity`) in the caller's
transaction and a PHI-free webhook (`kind: integrity`). `refuse` is the fail-closed end of a record whose sealed
category or label does not match its row: the attempt audited as denied, the alarm, the commit, IntegrityFailure.
Never: lets a failed check become an allow, names a patient other than by pseudonym, or puts a row's values in an
event or a webhook (ids and codes only).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, NoReturn

from sqlalchemy.orm import Session

from consent import integrity
from kms import suites
from vault import fields
from vault.access import alerts, audit_append
from vault.errors import IntegrityFailure
from vault.identity import Identity, RequestContext

if TYPE_CHECKING:
    from vault.access.gate import Target
    from vault.runtime import Vault

def purpose(suite: int) -> str:
    return suites.purpose(integrity.PURPOSE, suite)


def key_for(vault: Vault) -> integrity.KeyLookup:
    """suite -> the integrity key, or None for a suite this vault never keyed a tag with."""

    def lookup(suite: int) -> bytes | None:
        if suite != fields.suite_of(vault) and suite not in fields.keyed_suites(vault, integrity.PURPOSE):
            return None
        return vault.keys.service_key(purpose(suite))

    return lookup


def seal_grant(vault: Vault, grant: integrity.GrantFields, *, revoked_at: dt.datetime | None) -> bytes:
    suite = fields.suite_of(vault)
    return integrity.seal(vault.keys.service_key(purpose(suite)),
                          integrity.grant_message(grant, revoked_at=revoked_at), suite=suite)


def grant_intact(vault: Vault, grant: integrity.GrantFields, *, revoked_at: dt.datetime | None,
                 tag: bytes | None) -> bool:
    return integrity.check(tag, integrity.grant_message(grant, revoked_at=revoked_at), key_for(vault))


def seal_breakglass(vault: Vault, *, claim_id: str, doctor_id: str, patient_id: str, created_at: dt.datetime,
                    expires_at: dt.datetime) -> bytes:
    suite = fields.suite_of(vault)
    message = integrity.breakglass_message(claim_id=claim_id, doctor_id=doctor_id, patient_id=patient_id,
                                           created_at=created_at, expires_at=expires_at)
    return integrity.seal(vault.keys.service_key(purpose(suite)), message, suite=suite)


def alarm(vault: Vault, session: Session, *, identity: Identity, ctx: RequestContext, target: Target,
          sources: tuple[str, ...]) -> None:
    """One `alert.raised` event per failed row ("grant:<id>", "breakglass:<id>", "record:<id>") in the caller's
    transaction, and the webhook."""
    for source in sources:
        kind, _, ident = source.partition(":")
        audit_append.append(session, vault, identity=identity, ctx=ctx, action="alert.raised", outcome="deny",
                            resource_type=target.resource_type, resource_id=target.resource_id,
                            patient_id=target.patient_id, reason="integrity",
                            grant_id=ident if kind in ("grant", "breakglass") else None)
    alerts.send_webhook(vault.settings.alert_webhook, {
        "kind": "integrity", "rows": list(sources), "resource_type": target.resource_type,
        "resource_id": target.resource_id if target.resource_type == "record" else None,
        "actor": audit_append.actor_pseudonym(vault, identity.account_id), "actor_role": identity.role,
        "patient": audit_append.patient_pseudonym(vault, target.patient_id) if target.patient_id else None,
        "at": vault.clock().isoformat()})


def refuse(vault: Vault, session: Session, *, identity: Identity, ctx: RequestContext, action: str,
           target: Target) -> NoReturn:
    """A row that authorisation reads failed its check: audit the attempt as denied, raise the alarm, commit, and
    fail with IntegrityFailure (nothing is returned)."""
    audit_append.append(session, vault, identity=identity, ctx=ctx, action=action, outcome="deny",
                        resource_type=target.resource_type, resource_id=target.resource_id,
                        patient_id=target.patient_id, reason="integrity")
    alarm(vault, session, identity=identity, ctx=ctx, target=target,
          sources=(f"{target.resource_type}:{target.resource_id}",))
    session.commit()
    raise IntegrityFailure()
