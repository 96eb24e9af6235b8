import dataclasses
import datetime as dt
import io
import tarfile

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from api.deps import current_identity, get_ctx, get_vault
from api.schemas import AccessEntryOut, AccessLogPage, AuditEventOut, AuditEventPage, ExportIn, ExportOut
from vault.auditing import trail as audit_trail
from vault.errors import Conflict
from vault.identity import Identity, RequestContext
from vault.runtime import Vault

router = APIRouter(tags=["audit"])


def _event_out(row) -> AuditEventOut:
    return AuditEventOut(id=row.id, chain=row.chain_id, seq=row.seq, time=row.occurred_at, actor=row.actor,
                         actor_role=row.actor_role, action=row.action, resource_type=row.resource_type,
                         resource_id=row.resource_id, patient=row.patient_pseudonym, outcome=row.outcome,
                         reason=row.reason, grant_id=row.grant_id, request_id=row.request_id,
                         client_addr=row.client_addr, user_agent=row.user_agent, prev_hash=row.prev_hash,
                         hash=row.hash)


def _export_out(job) -> ExportOut:
    return ExportOut(export_id=job.export_id, status=job.status, done=job.done, total=job.total,
                     event_count=job.event_count, error=job.error)


@router.get("/v1/audit/events", response_model=AuditEventPage)
def search_events(
    since: dt.datetime | None = None, until: dt.datetime | None = None,
    actor: str | None = Query(None, max_length=64), patient: str | None = Query(None, max_length=64),
    action: str | None = Query(None, max_length=48), outcome: str | None = Query(None, pattern="^(allow|deny|error)$"),
    limit: int = Query(100, ge=1, le=audit_trail.MAX_PAGE), cursor: str | None = Query(None, max_length=20),
    identity: Identity = Depends(current_identity), vault: Vault = Depends(get_vault),
    ctx: RequestContext = Depends(get_ctx),
) -> AuditEventPage:
    filters = audit_trail.Filters(since=since, until=until, actor=actor, patient=patient, action=action,
                                  outcome=outcome)
    with vault.session() as session:
        rows, next_cursor = audit_trail.search(session, vault, identity=identity, ctx=ctx, filters=filters,
                                               limit=limit, cursor=cursor)
        return AuditEventPage(items=[_event_out(r) for r in rows], next_cursor=next_cursor)


@router.post("/v1/audit/exports", status_code=202, response_model=ExportOut)
def create_export(body: ExportIn, identity: Identity = Depends(current_identity), vault: Vault = Depends(get_vault),
                  ctx: RequestContext = Depends(get_ctx)) -> ExportOut:
    with vault.session() as session:
        job = audit_trail.start_export(session, vault, identity=identity, ctx=ctx, since=body.since,
                                       until=body.until)
    return _export_out(job)


@router.get("/v1/audit/exports/{export_id}", response_model=ExportOut)
def export_status(export_id: str, identity: Identity = Depends(current_identity), vault: Vault = Depends(get_vault),
                  ctx: RequestContext = Depends(get_ctx)) -> ExportOut:
    with vault.session() as session:
        return _export_out(audit_trail.get_export(session, vault, identity=identity, ctx=ctx, export_id=export_id))


@router.get("/v1/audit/exports/{export_id}/archive", response_class=Response)
def export_archive(export_id: str, identity: Identity = Depends(current_identity), vault: Vault = Depends(get_vault),
                   ctx: RequestContext = Depends(get_ctx)) -> Response:
    """The finished export as a tar.gz (it holds pseudonyms and hashes only, never PHI)."""
    with vault.session() as session:
        job = audit_trail.get_export(session, vault, identity=identity, ctx=ctx, export_id=export_id)
    if job.status != "done":
        raise Conflict("The export is not finished", extra={"status": job.status})
    assert job.path is not None  # a finished export has its directory
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(job.path, arcname=f"audit-export-{export_id}")
    return Response(buffer.getvalue(), media_type="application/gzip",
                    headers={"content-disposition": f'attachment; filename="audit-export-{export_id}.tar.gz"'})


@router.get("/v1/patients/me/access-log", response_model=AccessLogPage, tags=["patients"])
def my_access_log(limit: int = Query(100, ge=1, le=audit_trail.MAX_PAGE),
                  cursor: str | None = Query(None, max_length=20), identity: Identity = Depends(current_identity),
                  vault: Vault = Depends(get_vault), ctx: RequestContext = Depends(get_ctx)) -> AccessLogPage:
    with vault.session() as session:
        entries, next_cursor = audit_trail.access_log(session, vault, identity=identity, ctx=ctx, limit=limit,
                                                      cursor=cursor)
    return AccessLogPage(items=[AccessEntryOut(**dataclasses.asdict(e)) for e in entries], next_cursor=next_cursor)
