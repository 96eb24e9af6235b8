"""The staff's pages: a doctor's or escort's records shared with them and break-glass (with its warning, step-up code
and countdown); the compliance staff's audit search, exports with progress and download, and key status.

Owns only the browser shape: every page calls the sharing, records, auditing and keys services with the caller's
Identity, so the gate decides and audits exactly as for the JSON API.
Never: reads data another way than through a service.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import re
import tarfile
import uuid
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api.console.pages import (
    AUDITORS,
    GRANTEES,
    KEY_READERS,
    field,
)
from api.console.session import (
    headers,
    open_console,
    page,
)
from vault.auditing import trail
from vault.errors import (
    Conflict,
    InvalidInput,
    NotFound,
)
from vault.identity import Identity
from vault.keys import status as keyops
from vault.sharing import service as sharing

router = APIRouter(include_in_schema=False)


# ---- doctor / escort ------------------------------------------------------------------------------------------------

@router.get("/shared")
@page
async def shared(request: Request) -> Response:
    console = await open_console(request)

    def work(session, identity: Identity) -> list[sharing.SharedRecord]:
        return sharing.shared_with_me(session, console.vault, identity=identity, ctx=console.ctx)

    items = await console.run(work, roles=GRANTEES)
    return console.page("shared.html", items=items)


@router.get("/breakglass")
@page
async def breakglass_form(request: Request) -> Response:
    console = await open_console(request)
    await console.run(lambda _s, i: i, roles=frozenset({"doctor"}))
    return console.page("breakglass.html", claim=None, error=None)


@router.post("/breakglass")
@page
async def breakglass(request: Request) -> Response:
    console = await open_console(request)
    patient_id = field(console, "patient_id")
    try:
        patient_id = str(uuid.UUID(patient_id))
    except ValueError:
        raise InvalidInput("patient id must be an id", extra={"reason": "patient_id"}) from None

    def work(session, identity: Identity):
        claim = sharing.breakglass(session, console.vault, identity=identity, ctx=console.ctx, patient_id=patient_id,
                                   reason=field(console, "reason"), otp=field(console, "otp") or None)
        return claim.id, claim.expires_at

    claim_id, expires_at = await console.run(work, roles=frozenset({"doctor"}))
    expires = expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=dt.UTC)
    return console.page("breakglass.html", error=None, claim={
        "id": claim_id, "expires_at": expires, "expires_ms": int(expires.timestamp() * 1000),
        "left": max(int((expires - console.vault.clock()).total_seconds()), 0)})


# ---- compliance: audit search, exports, keys -------------------------------------------------------------------------

def _when_param(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput("dates look like 2026-12-07 or 2026-12-07T08:00", extra={"reason": "date"}) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@router.get("/audit")
@page
async def audit_search(request: Request) -> Response:
    console = await open_console(request)
    q = request.query_params
    values = {k: (q.get(k) or "").strip()[:64] for k in ("actor", "patient", "action", "outcome", "since", "until")}
    if values["outcome"] not in ("", "allow", "deny", "error"):
        raise InvalidInput("outcome is allow, deny or error", extra={"reason": "outcome"})
    cursor = q.get("cursor")
    if cursor is not None and (len(cursor) > 20 or not cursor.isdigit()):
        raise InvalidInput("Invalid cursor")
    filters = trail.Filters(since=_when_param(values["since"]), until=_when_param(values["until"]),
                            actor=values["actor"] or None, patient=values["patient"] or None,
                            action=values["action"] or None, outcome=values["outcome"] or None)

    def work(session, identity: Identity):
        return trail.search(session, console.vault, identity=identity, ctx=console.ctx, filters=filters, limit=25,
                            cursor=cursor)

    rows, next_cursor = await console.run(work, roles=AUDITORS)
    kept = {k: v for k, v in values.items() if v}
    return console.page("audit.html", rows=rows, values=values,
                        next_url=f"/audit?{urlencode({**kept, 'cursor': next_cursor})}" if next_cursor else None,
                        actor_url=lambda actor: f"/audit?{urlencode({**kept, 'actor': actor})}")


@router.post("/audit/exports")
@page
async def start_export(request: Request) -> Response:
    console = await open_console(request)
    since, until = _when_param(field(console, "since")), _when_param(field(console, "until"))

    def work(session, identity: Identity) -> trail.ExportJob:
        return trail.start_export(session, console.vault, identity=identity, ctx=console.ctx, since=since,
                                  until=until)

    job = await console.run(work, roles=AUDITORS)
    return console.redirect(f"/audit/exports/{job.export_id}")


@router.get("/audit/exports")
@page
async def exports_page(request: Request) -> Response:
    console = await open_console(request)
    await console.run(lambda _s, i: i, roles=AUDITORS)
    return console.page("exports.html")


def _export_id(value: str) -> str:
    if not _EXPORT_ID.fullmatch(value):
        raise NotFound()
    return value


_EXPORT_ID = re.compile(r"[0-9a-f]{16}")


@router.get("/audit/exports/{export_id}")
@page
async def export_status(request: Request, export_id: str) -> Response:
    console = await open_console(request)
    eid = _export_id(export_id)

    def work(session, identity: Identity) -> tuple[trail.ExportJob, str]:
        job = trail.get_export(session, console.vault, identity=identity, ctx=console.ctx, export_id=eid)
        return job, trail.signer(console.vault).vkey()

    job, vkey = await console.run(work, roles=AUDITORS)
    template = "export_fragment.html" if request.headers.get("hx-request") == "true" else "export.html"
    return console.page(template, job=job, vkey=vkey)


@router.get("/audit/exports/{export_id}/archive")
@page
async def export_archive(request: Request, export_id: str) -> Response:
    console = await open_console(request)
    eid = _export_id(export_id)

    def work(session, identity: Identity) -> trail.ExportJob:
        return trail.get_export(session, console.vault, identity=identity, ctx=console.ctx, export_id=eid)

    job = await console.run(work, roles=AUDITORS)
    if job.status != "done":
        raise Conflict("The export is not finished", extra={"export_status": job.status})

    def pack() -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(job.path, arcname=f"audit-export-{eid}")
        return buffer.getvalue()

    body = await run_in_threadpool(pack)
    return headers(Response(body, media_type="application/gzip", headers={
        "content-disposition": f'attachment; filename="audit-export-{eid}.tar.gz"'}))


@router.get("/keys")
@page
async def key_status(request: Request) -> Response:
    console = await open_console(request)

    def work(session, identity: Identity) -> Any:
        return keyops.status(session, console.vault, identity=identity, ctx=console.ctx)

    status = await console.run(work, roles=KEY_READERS)
    return console.page("keys.html", status=json.dumps(dataclasses.asdict(status), default=str, indent=2,
                                                         ensure_ascii=False))
