"""Root rotation under the two-person rule, and patient KEK rotation.

Owns: the root rotation requests and their state machine (pending -> approved -> executing -> executed; pending ->
expired after `REQUEST_TTL`; a single-person development rotation the provider refused -> failed), the CLI's root
rotation (`rotate_root_cli`: runs an approved request, else production refuses and development rotates
single-handed, audited as such), and new KEK versions for one patient or all of them.
Never: lets the secadmin who requested a root rotation approve it, returns or logs key bytes, or rewraps anything
(old wraps keep opening until `vault.keys.rewrap` moves them).

Who may do what (consent/policy.csv, decided by the gate): secadmin `key.request`, `key.approve`, `key.status`;
auditor and auditadmin `key.status` only. The CLI is the operator's tool on the host (it holds the root key's
passphrase or PIN anyway); it records its own audit events under the operator identity and follows the same
two-person rule for the root in production.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

from pydantic import Field
from sqlalchemy.orm import Session

from kms import KeyDestroyed, KeyStoreError
from kms.keystore_tables import RotationRequest
from vault.access import gate
from vault.errors import Conflict, Forbidden, InvalidInput, NotFound
from vault.identity import Identity, RequestContext
from vault.keys.common import DEFAULT_BATCH, audit, audit_now, log, utc

if TYPE_CHECKING:
    from vault.runtime import Vault

REQUEST_TTL = dt.timedelta(hours=24)


@dataclasses.dataclass(frozen=True)
class RotationView:
    request_id: str
    target: str
    status: Annotated[str, Field(description="pending | approved | executing | executed | expired | failed")]
    requested_by: Annotated[str, Field(description="account id of the requesting secadmin")]
    requested_at: dt.datetime
    approved_by: str | None
    approved_at: dt.datetime | None
    executed_at: dt.datetime | None
    new_version: int | None


def is_expired(row: RotationRequest, now: dt.datetime) -> bool:
    """A pending request older than `REQUEST_TTL` (it is marked expired when next looked at)."""
    return row.status == "pending" and utc(row.requested_at) + REQUEST_TTL <= now


def _existing(row: RotationRequest | None) -> RotationRequest:
    """A request the gate let through or this module just wrote: its absence is a 404, never an AttributeError."""
    if row is None:
        raise NotFound()
    return row


def _view(row: RotationRequest, now: dt.datetime) -> RotationView:
    return RotationView(request_id=row.id, target=row.target, status="expired" if is_expired(row, now) else row.status,
                        requested_by=row.requested_by, requested_at=utc(row.requested_at),
                        approved_by=row.approved_by, approved_at=utc(row.approved_at),
                        executed_at=utc(row.executed_at), new_version=row.new_version)


def _rotation_target(request_id: str | None, exists: bool = True) -> gate.Target:
    return gate.Target("key-rotation", request_id, None, exists=exists)


def list_rotations(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext,
                   limit: int = 50) -> list[RotationView]:
    if not 1 <= limit <= 500:
        raise InvalidInput("limit must be between 1 and 500", extra={"reason": "limit"})
    gate.enter(vault, session, identity=identity, ctx=ctx, action="key.status", target=_rotation_target(None))
    session.commit()
    now = vault.clock()
    return [_view(r, now) for r in vault.keystore.rotation_requests(limit=limit)]


def get_rotation(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext,
                 request_id: str) -> RotationView:
    row = vault.keystore.rotation_request(request_id) if _is_uuid(request_id) else None
    gate.enter(vault, session, identity=identity, ctx=ctx, action="key.status",
               target=_rotation_target(request_id if row else None, exists=row is not None))
    session.commit()
    return _view(_existing(row), vault.clock())


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, TypeError, AttributeError):
        return False


def request_root_rotation(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext) -> RotationView:
    """A secadmin asks for a new root version; it stays pending until a different secadmin approves (24 h)."""
    gate.enter(vault, session, identity=identity, ctx=ctx, action="key.request", target=_rotation_target(None),
               audit_allow=False)
    now = vault.clock()
    store = vault.keystore
    for row in store.rotation_requests(target="root", statuses=("pending", "approved", "executing")):
        if is_expired(row, now):
            store.move_rotation_request(row.id, from_status="pending", status="expired")
            continue
        audit(session, vault, identity=identity, ctx=ctx, action="key.request", outcome="deny",
              resource_type="key-rotation", resource_id=row.id, reason="already-open")
        session.commit()
        raise Conflict("A root rotation request is already open",
                       extra={"rotation_request_id": row.id, "request_status": row.status})
    row = RotationRequest(id=str(uuid.uuid4()), target="root", status="pending",
                          requested_by=identity.account_id[:64], requested_at=now)
    store.add_rotation_request(row)
    audit(session, vault, identity=identity, ctx=ctx, action="key.request", resource_type="key-rotation",
          resource_id=row.id, reason="root")
    session.commit()
    return _view(row, now)


def approve_root_rotation(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext,
                          request_id: str) -> RotationView:
    """A second, different secadmin approves; the rotation then runs at once (GB/T 39786 §8.6 b)."""
    store = vault.keystore
    row = store.rotation_request(request_id) if _is_uuid(request_id) else None
    target = _rotation_target(request_id if row else None, exists=row is not None)
    gate.enter(vault, session, identity=identity, ctx=ctx, action="key.approve", target=target, deny_as=Forbidden,
               audit_allow=False)
    row = _existing(row)
    now = vault.clock()
    if row.requested_by == identity.account_id[:64]:
        audit(session, vault, identity=identity, ctx=ctx, action="key.approve", outcome="deny",
              resource_type="key-rotation", resource_id=row.id, reason="two-person-rule")
        session.commit()
        raise Forbidden("A root-key rotation must be approved by a different security administrator than the one "
                        "who requested it (two-person rule, GB/T 39786 §8.6)", extra={"reason": "two-person-rule"})
    if is_expired(row, now):
        store.move_rotation_request(row.id, from_status="pending", status="expired")
        row = _existing(store.rotation_request(row.id))
    if row.status != "pending" or not store.move_rotation_request(
            row.id, from_status="pending", status="approved", approved_by=identity.account_id[:64], approved_at=now):
        current = _existing(store.rotation_request(row.id))
        audit(session, vault, identity=identity, ctx=ctx, action="key.approve", outcome="deny",
              resource_type="key-rotation", resource_id=row.id, reason=f"status:{current.status}")
        session.commit()
        raise Conflict("This rotation request is not pending", extra={"request_status": current.status})
    audit(session, vault, identity=identity, ctx=ctx, action="key.approve", resource_type="key-rotation",
          resource_id=row.id, reason="two-person-rule")
    session.commit()
    return _execute(session, vault, request_id=row.id, identity=identity, ctx=ctx)


def _execute(session: Session, vault: Vault, *, request_id: str, identity: Identity, ctx: RequestContext,
             from_status: str = "approved") -> RotationView:
    store = vault.keystore
    if not store.move_rotation_request(request_id, from_status=from_status, status="executing"):
        return _view(_existing(store.rotation_request(request_id)), vault.clock())  # someone else runs it
    try:
        version = vault.keys.rotate_root()
    except KeyStoreError as exc:
        store.move_rotation_request(request_id, from_status="executing", status="approved")
        audit(session, vault, identity=identity, ctx=ctx, action="key.rotate", outcome="error",
              resource_type="root-key", resource_id=request_id, reason="provider-refused")
        session.commit()
        log.warning("approved root rotation %s could not run here: %s", request_id, exc)
        return _view(_existing(store.rotation_request(request_id)), vault.clock())
    now = vault.clock()
    store.move_rotation_request(request_id, from_status="executing", status="executed", executed_at=now,
                                new_version=version)
    audit(session, vault, identity=identity, ctx=ctx, action="key.rotate", resource_type="root-key",
          resource_id=str(version), reason=f"request:{request_id}")
    session.commit()
    return _view(_existing(store.rotation_request(request_id)), now)


class TwoPersonRuleRefused(Exception):
    """The CLI was asked to rotate the root in production without an approved request."""


def rotate_root_cli(vault: Vault, *, identity: Identity, ctx: RequestContext,
                    profile: str | None = None) -> RotationView:
    """`keys rotate --root`: run an approved request if there is one; otherwise production refuses and
    development rotates single-handed (recorded and audited as such)."""
    store = vault.keystore
    now = vault.clock()
    profile = profile or vault.settings.profile
    stuck = now - dt.timedelta(minutes=5)
    open_rows = store.rotation_requests(target="root", statuses=("approved", "executing"))
    for row in open_rows:
        from_status = row.status
        if from_status == "executing" and utc(row.approved_at or row.requested_at) > stuck:
            continue  # another process is running it right now
        with vault.session() as session:
            view = _execute(session, vault, request_id=row.id, identity=identity, ctx=ctx, from_status=from_status)
        if view.status == "executed":
            return view
    if profile == "production":
        pending = [r for r in store.rotation_requests(target="root", statuses=("pending",)) if not is_expired(r, now)]
        audit_now(vault, identity=identity, ctx=ctx, action="key.rotate", outcome="deny", resource_type="root-key",
                  reason="two-person-rule")
        hint = (f"request {pending[0].id} is waiting for a second secadmin's approval"
                if pending else "no approved request exists")
        raise TwoPersonRuleRefused(
            "refusing to rotate the root key: in the production profile a root rotation needs two security "
            "administrators (GB/T 39786 §8.6): one requests it (POST /v1/keys/rotations), a different one approves "
            f"it (POST /v1/keys/rotations/<id>/approve); {hint}.")
    row = RotationRequest(id=str(uuid.uuid4()), target="root", status="executing",
                          requested_by=identity.account_id[:64], requested_at=now)
    store.add_rotation_request(row)
    try:
        version = vault.keys.rotate_root()
    except KeyStoreError:
        store.move_rotation_request(row.id, from_status="executing", status="failed")
        audit_now(vault, identity=identity, ctx=ctx, action="key.rotate", outcome="error", resource_type="root-key",
                  resource_id=row.id, reason="provider-refused")
        raise
    store.move_rotation_request(row.id, from_status="executing", status="executed", executed_at=vault.clock(),
                                new_version=version)
    audit_now(vault, identity=identity, ctx=ctx, action="key.rotate", resource_type="root-key",
              resource_id=str(version), reason=f"single-person ({profile} profile):{row.id}")
    return _view(_existing(store.rotation_request(row.id)), vault.clock())


# --- KEK rotation -----------------------------------------------------------------------------------------------------
def rotate_kek(vault: Vault, *, patient_id: str, identity: Identity, ctx: RequestContext) -> int:
    """A new KEK version for one patient; new DEKs use it at once, old DEKs move on the next rewrap."""
    try:
        version = vault.keys.rotate_patient_key(patient_id)
    except KeyDestroyed:
        raise KeyStoreError("this patient was erased: there is no key to rotate") from None
    audit_now(vault, identity=identity, ctx=ctx, action="key.rotate", resource_type="patient-kek",
              resource_id=str(version), patient_id=patient_id, reason="kek")
    return version


def rotate_all_keks(vault: Vault, *, identity: Identity, ctx: RequestContext, batch_size: int = DEFAULT_BATCH,
                    progress: Callable[[int], None] | None = None) -> int:
    """A new KEK version for every patient that has keys; one key-store transaction and one audit event per batch."""
    after, total = None, 0
    while True:
        ids = vault.keystore.live_patient_ids(after=after, limit=batch_size)
        if not ids:
            return total
        done = vault.keys.rotate_patient_keys(ids)
        total += len(done)
        audit_now(vault, identity=identity, ctx=ctx, action="key.rotate", resource_type="patient-kek",
                  reason=f"all-keks batch:{len(done)}")
        after = ids[-1]
        if progress is not None:
            progress(len(ids))

