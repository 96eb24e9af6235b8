"""The one gate every PHI read or write passes.

Owns the order that makes access accountable: (1) the caller's identity is already resolved, (2) the access is
decided, (3) the decision — allowed or denied — is appended to the audit trail in the caller's transaction, and
(4) only an allowed caller goes on to decrypt. A denial is committed on its own before the error is raised, so the
attempt stays on record. The decision today is ownership (a patient reaches only their own data; staff nothing
without a grant); consent grants and role policy plug in here through `consent/` in the consent issue.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy.orm import Session

from vault import audit_log
from vault.errors import Forbidden, NotFound, VaultError
from vault.identity import Identity, RequestContext


@dataclasses.dataclass(frozen=True)
class Target:
    """What is being reached: a resource and the patient it belongs to (None when it does not exist)."""

    resource_type: str
    resource_id: str | None
    patient_id: str | None
    exists: bool = True


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


# Role permissions that do not depend on a patient (compliance staff reading the trail). Static and small; the
# consent issue moves them into Casbin's RBAC policy.
ROLE_ACTIONS = {
    "audit.read": frozenset({"auditor", "auditadmin"}),
    "audit.export": frozenset({"auditor", "auditadmin"}),
}


def decide(identity: Identity, action: str, target: Target) -> Decision:
    """Fail-closed decision: allow only what a rule below allows."""
    if action in ROLE_ACTIONS:
        allowed = identity.role in ROLE_ACTIONS[action]
        return Decision(allowed, "role" if allowed else "role-not-permitted")
    if not target.exists:
        return Decision(False, "not-found")
    if identity.role == "patient" and identity.patient_id is not None and identity.patient_id == target.patient_id:
        return Decision(True, "owner")
    if identity.role == "patient":
        return Decision(False, "not-owner")
    return Decision(False, "no-grant")


def audit(vault, session: Session, *, identity: Identity, ctx: RequestContext, action: str, target: Target,
          outcome: str, reason: str | None) -> None:
    """Append one event for this target in the session's transaction."""
    audit_log.append(session, vault, identity=identity, ctx=ctx, action=action, outcome=outcome,
                     resource_type=target.resource_type, resource_id=target.resource_id,
                     patient_id=target.patient_id, reason=reason)


def enter(vault, session: Session, *, identity: Identity, ctx: RequestContext, action: str, target: Target,
          deny_as: type[VaultError] = Forbidden, audit_allow: bool = True) -> Decision:
    """Decide and audit; raise `deny_as` (NotFound when existence must not leak) after committing a denial.

    `audit_allow=False` is for a pre-check whose allowed outcome is audited later in the same request, together with
    the write it permits (an upload is checked before its bytes are read, and recorded when its row is written).
    """
    decision = decide(identity, action, target)
    if decision.allowed and not audit_allow:
        return decision
    audit(vault, session, identity=identity, ctx=ctx, action=action, target=target,
          outcome="allow" if decision.allowed else "deny", reason=decision.reason)
    if not decision.allowed:
        session.commit()
        raise (NotFound if not target.exists else deny_as)()
    return decision
