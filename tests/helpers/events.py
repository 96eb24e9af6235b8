"""Audit events made for tests: one tagged event in the caller's transaction."""

from __future__ import annotations

import uuid

from vault.access import audit_append
from vault.identity import Identity, RequestContext


def append_tagged_event(session, vault, tag: str, patient_id: str | None = None) -> dict:
    """One audit event whose request id is `tag`, in the session's transaction (of a new patient, or of
    `patient_id`); returns the event as exported."""
    identity = Identity(account_id=str(uuid.uuid4()), role="patient", patient_id=patient_id or str(uuid.uuid4()))
    return audit_append.append(session, vault, identity=identity, ctx=RequestContext(request_id=tag),
                            action="record.read", outcome="allow", resource_type="record",
                            resource_id=str(uuid.uuid4()), patient_id=identity.patient_id)
