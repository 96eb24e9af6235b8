"""The audit trail over HTTP: search, exports (status and archive) and the patient's own access log.

Owns only the HTTP shape; vault.auditing.trail decides who may read what and audits every call.
"""

from __future__ import annotations

import io
import tarfile
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from api.deps import Ctx, CurrentIdentity, VaultDep
from api.schemas import Instant, contract
from api.schemas.audit import (
    AccessEntryOut,
    AccessLogPage,
    AuditEventOut,
    AuditEventPage,
    AuditPublicKeyOut,
    ExportIn,
    ExportOut,
)
from audit.models import AuditEvent
from vault.auditing import trail as audit_trail
from vault.errors import Conflict

router = APIRouter(tags=["audit"])


def _event_out(row: AuditEvent) -> AuditEventOut:
    return AuditEventOut(id=row.id, chain=row.chain_id, seq=row.seq, time=row.occurred_at, actor=row.actor,
                         actor_role=row.actor_role, action=row.action, resource_type=row.resource_type,
                         resource_id=row.resource_id, patient=row.patient_pseudonym, outcome=row.outcome,
                         reason=row.reason, grant_id=row.grant_id, request_id=row.request_id,
                         client_addr=row.client_addr, user_agent=row.user_agent, prev_hash=row.prev_hash,
                         hash=row.hash)


def _export_out(job: audit_trail.ExportJob) -> ExportOut:
    return ExportOut(export_id=job.export_id, status=job.status, done=job.done, total=job.total,
                     event_count=job.event_count, error=job.error)


@router.get("/v1/audit/events", response_model=AuditEventPage)
def search_events(
    identity: CurrentIdentity, vault: VaultDep, ctx: Ctx,
    since: Instant | None = None, until: Instant | None = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    patient: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=48)] = None,
    outcome: Annotated[str | None, Query(pattern="^(allow|deny|error)$")] = None,
    limit: Annotated[int, Query(ge=1, le=audit_trail.MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(max_length=20)] = None,
) -> AuditEventPage:
    filters = audit_trail.Filters(since=since, until=until, actor=actor, patient=patient, action=action,
                                  outcome=outcome)
    with vault.session() as session:
        rows, next_cursor = audit_trail.search(session, vault, identity=identity, ctx=ctx, filters=filters,
                                               limit=limit, cursor=cursor)
        return AuditEventPage(items=[_event_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/v1/audit/public-key", response_model=AuditPublicKeyOut)
def audit_public_key(identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> AuditPublicKeyOut:
    """The verifier key of the trail, for auditors to hand over out of band and pin when verifying an export."""
    with vault.session() as session:
        return contract(AuditPublicKeyOut, audit_trail.public_key(session, vault, identity=identity, ctx=ctx))


@router.post("/v1/audit/exports", status_code=202, response_model=ExportOut)
def create_export(body: ExportIn, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> ExportOut:
    with vault.session() as session:
        job = audit_trail.start_export(session, vault, identity=identity, ctx=ctx, since=body.since,
                                       until=body.until)
    return _export_out(job)


@router.get("/v1/audit/exports/{export_id}", response_model=ExportOut)
def export_status(export_id: str, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> ExportOut:
    with vault.session() as session:
        return _export_out(audit_trail.get_export(session, vault, identity=identity, ctx=ctx, export_id=export_id))


@router.get("/v1/audit/exports/{export_id}/archive", response_class=Response)
def export_archive(export_id: str, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> Response:
    """The finished export as a tar.gz (it holds pseudonyms and hashes only, never PHI)."""
    with vault.session() as session:
        job = audit_trail.get_export(session, vault, identity=identity, ctx=ctx, export_id=export_id)
    if job.status != "done" or job.path is None:
        raise Conflict("The export is not finished", extra={"export_status": job.status})
    assert job.path is not None  # a finished export has its directory
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(job.path, arcname=f"audit-export-{export_id}")
    return Response(buffer.getvalue(), media_type="application/gzip",
                    headers={"content-disposition": f'attachment; filename="audit-export-{export_id}.tar.gz"'})


@router.get("/v1/patients/me/access-log", response_model=AccessLogPage, tags=["patients"])
def my_access_log(identity: CurrentIdentity, vault: VaultDep, ctx: Ctx,
                  limit: Annotated[int, Query(ge=1, le=audit_trail.MAX_PAGE)] = 100,
                  cursor: Annotated[str | None, Query(max_length=20)] = None) -> AccessLogPage:
    with vault.session() as session:
        entries, next_cursor = audit_trail.access_log(session, vault, identity=identity, ctx=ctx, limit=limit,
                                                      cursor=cursor)
    return AccessLogPage(items=[contract(AccessEntryOut, e) for e in entries], next_cursor=next_cursor)
