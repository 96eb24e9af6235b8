"""The one gate every PHI read or write passes.

Owns the order that makes access accountable: (1) the caller's identity is already resolved, (2) Casbin decides
(`consent.engine`: role policy, ownership, live consent grants, break-glass claims), (3) the decision — allowed or
denied, with the grant that allowed it — is appended to the audit trail in the caller's transaction, and (4) only an
allowed caller goes on to decrypt. A denial is committed on its own before the error is raised, so the attempt stays
on record. Fail closed: an error in the decision is a denial. A grant or break-glass row whose integrity tag fails
(INT-1, `vault.access.integrity`) counts as absent and raises the alarm; a denial it caused is an IntegrityFailure.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from consent import engine
from vault.access import alerts, audit_append, integrity
from vault.errors import Forbidden, IntegrityFailure, NotFound, VaultError
from vault.identity import Identity, RequestContext

if TYPE_CHECKING:
    from vault.runtime import Vault


@dataclasses.dataclass(frozen=True)
class Target:
    """What is being reached: a resource and the patient it belongs to (None when it does not exist)."""

    resource_type: str
    resource_id: str | None
    patient_id: str | None
    exists: bool = True
    category: str | None = None
    label: str | None = None

    @property
    def obj(self) -> str:
        if self.resource_type in ("record", "patient", "grant") and self.resource_id:
            return f"{self.resource_type}:{self.resource_id}"
        return self.resource_type

    @property
    def cls(self) -> str:
        return f"category:{self.category}/{self.label}" if self.category and self.label else "-"


Decision = engine.Decision


# Operations of administrators and compliance staff; with `admin_networks` set they are reachable only from there.
ADMIN_ACTIONS = frozenset({"audit.read", "audit.export", "account.create", "account.update", "account.list",
                           "account.role", "policy.read",
                           "key.rotate", "key.status", "key.request", "key.approve"})


def _from_admin_network(vault: Vault, ctx: RequestContext) -> bool:
    networks = vault.settings.admin_networks
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(ctx.client_addr or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n.strip(), strict=False) for n in networks.split(",") if n.strip())


def decide(session: Session, vault: Vault, identity: Identity, action: str, target: Target,
           ctx: RequestContext | None = None) -> Decision:
    """Fail-closed decision through Casbin (and the admin-network rule, IP-3)."""
    if action in ADMIN_ACTIONS and not _from_admin_network(vault, ctx or RequestContext()):
        return Decision(False, "network")
    if not target.exists:
        return Decision(False, "not-found")
    request = engine.Request(account_id=identity.account_id, role=identity.role, own_patient_id=identity.patient_id,
                             patient_id=target.patient_id, obj=target.obj, cls=target.cls, action=action)
    return engine.decide(session, request, now=vault.clock(), key_for=integrity.key_for(vault))


def audit(vault: Vault, session: Session, *, identity: Identity, ctx: RequestContext, action: str, target: Target,
          outcome: str, reason: str | None, grant_id: str | None = None) -> None:
    """Append one event for this target in the session's transaction."""
    audit_append.append(session, vault, identity=identity, ctx=ctx, action=action, outcome=outcome,
                     resource_type=target.resource_type, resource_id=target.resource_id,
                     patient_id=target.patient_id, reason=reason, grant_id=grant_id)


def enter(vault: Vault, session: Session, *, identity: Identity, ctx: RequestContext, action: str, target: Target,
          deny_as: type[VaultError] = Forbidden, audit_allow: bool = True) -> Decision:
    """Decide and audit; raise `deny_as` (NotFound when existence must not leak) after committing a denial.

    `audit_allow=False` is for a pre-check whose allowed outcome is audited later in the same request, together with
    the write it permits (an upload is checked before its bytes are read, and recorded when its row is written).
    """
    decision = decide(session, vault, identity, action, target, ctx)
    if decision.tampered:
        integrity.alarm(vault, session, identity=identity, ctx=ctx, target=target, sources=decision.tampered)
    if decision.allowed and not audit_allow:
        return decision
    reason = decision.source.partition(":")[0] if decision.allowed else decision.source
    audit(vault, session, identity=identity, ctx=ctx, action=action, target=target,
          outcome="allow" if decision.allowed else "deny", reason=reason, grant_id=decision.grant_id)
    if not decision.allowed:
        alert_on_burst(vault, session, identity=identity, ctx=ctx, target=target)
        session.commit()
        if decision.tampered:
            raise IntegrityFailure()
        raise (NotFound if not target.exists else deny_as)()
    return decision


def alert_on_burst(vault: Vault, session: Session, *, identity: Identity, ctx: RequestContext, target: Target) -> None:
    actor = audit_append.actor_pseudonym(vault, identity.account_id)
    count = alerts.denial_burst(session, actor=actor, now=vault.clock(),
                                threshold=vault.settings.alert_denials_per_minute)
    if count is None:
        return
    audit(vault, session, identity=identity, ctx=ctx, action="alert.raised", target=target, outcome="deny",
          reason="denial-burst")
    alerts.send_webhook(vault.settings.alert_webhook, {"kind": "denial-burst", "actor": actor,
                                                       "actor_role": identity.role, "count": count,
                                                       "window_seconds": 60, "at": vault.clock().isoformat()})
