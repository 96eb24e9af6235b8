"""Records over HTTP: streamed upload, the page of one's own records, a record's metadata and its content.

Owns only the HTTP shape; vault.records decides and audits. The record reads are the hottest routes and run through
the database lane (`as_caller`), see the note above `get_record`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import TypeAdapter
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api import multipart
from api.deps import BEARER_REQUIRED, CallerDep, Ctx, CurrentIdentity, VaultDep, as_caller, record_path
from api.schemas import contract
from api.schemas.records import RecordOut, RecordPage
from vault.errors import InvalidInput, PayloadTooLarge
from vault.identity import Identity
from vault.records import service as records
from vault.records import watermark
from vault.records.uploads import UploadSink

router = APIRouter(prefix="/v1/records", tags=["records"])

# Room for multipart framing and the small text fields around the file.
_FORM_OVERHEAD = 64 * 1024

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "category"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "category": {"type": "string", "enum": list(records.CATEGORIES)},
                        "title": {"type": "string", "maxLength": records.MAX_TITLE_LENGTH},
                        "label": {"type": "string", "enum": ["normal", "sensitive", "special"], "default": "normal"},
                    },
                }
            }
        },
    }
}


# The JSON of a `RecordOut`, written straight from the domain's view (`patient_id` is excluded by the view itself).
_RECORD_JSON = TypeAdapter(records.RecordView)


@router.post("", status_code=201, response_model=RecordOut, openapi_extra=_UPLOAD_BODY)
async def upload(request: Request, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> RecordOut:
    limit = vault.settings.max_upload_bytes
    declared_length = request.headers.get("content-length")
    if declared_length and declared_length.isdigit() and int(declared_length) > limit + _FORM_OVERHEAD:
        raise PayloadTooLarge(f"Files may be at most {limit} bytes")
    record_id = str(uuid.uuid4())

    def precheck() -> str:
        with vault.session() as session:
            return records.authorize_upload(session, vault, identity=identity, ctx=ctx, record_id=record_id,
                                            patient_id=identity.patient_id)

    patient_id = await run_in_threadpool(precheck)

    def open_sink(declared_type: str | None) -> UploadSink:
        return UploadSink(vault, record_id=record_id, patient_id=patient_id, declared_type=declared_type,
                          max_bytes=limit, keep_original=vault.settings.keep_original_uploads)

    sink, fields, filename = await multipart.receive(request.headers.get("content-type", ""), request.stream(),
                                                     max_body=limit + _FORM_OVERHEAD, open_sink=open_sink)
    try:
        unknown = set(fields) - {"category", "title", "label"}
        if unknown:
            raise InvalidInput("Unknown form fields", extra={"reason": "form", "fields": sorted(unknown)})

        def commit() -> records.RecordView:
            with vault.session() as session:
                return records.create(session, vault, identity=identity, ctx=ctx, sink=sink,
                                      category=fields.get("category", ""), title=fields.get("title"),
                                      filename=filename, label=fields.get("label", "normal"))

        view = await run_in_threadpool(commit)
    finally:
        sink.abort()
    return contract(RecordOut, view)


@router.get("", response_model=RecordPage, openapi_extra=BEARER_REQUIRED)
async def list_records(who: CallerDep, limit: Annotated[int, Query(ge=1, le=records.MAX_PAGE)] = 50,
                       cursor: Annotated[str | None, Query(max_length=512)] = None) -> RecordPage:
    def work(session: Session, identity: Identity) -> RecordPage:
        views, next_cursor = records.list_own(session, who.vault, identity=identity, ctx=who.ctx, limit=limit,
                                              cursor=cursor)
        return RecordPage(items=[contract(RecordOut, v) for v in views], next_cursor=next_cursor)

    return await as_caller(who, work)


# The record reads declare no FastAPI parameter or dependency. They are the hottest routes, and with the reads running
# on the event loop, FastAPI's solving of the path parameter and the `caller` dependency took ~8 % of its time
# (docs/performance.md). `record_path` keeps the contract: the same 401 before the same 422 problem for an id that is
# not a UUID, the same OpenAPI entry.
_RECORD_ID = {"parameters": [{"in": "path", "name": "record_id", "required": True,
                              "schema": {"format": "uuid", "title": "Record Id", "type": "string"}}],
              "responses": {"422": {"description": "Validation Error", "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}},
              **BEARER_REQUIRED}


@router.get("/{record_id}", response_model=RecordOut, openapi_extra=_RECORD_ID)
async def get_record(request: Request) -> Response:
    who, record_id = record_path(request)

    def work(session: Session, identity: Identity) -> Response:
        # Serialised once here (FastAPI would validate the returned model against response_model a second time).
        view = records.read(session, who.vault, identity=identity, ctx=who.ctx, record_id=record_id)
        return Response(_RECORD_JSON.dump_json(view), media_type="application/json")

    return await as_caller(who, work)


@router.get("/{record_id}/content", response_class=StreamingResponse, openapi_extra=_RECORD_ID)
async def get_content(request: Request) -> Response:
    who, record_id = record_path(request)

    def work(session: Session,
             identity: Identity) -> tuple[records.RecordView, Iterator[bytes]] | watermark.PendingDownload:
        if identity.role != "patient":  # a grantee gets a watermarked, traceable copy (vault/records/watermark.py)
            return watermark.authorize(session, who.vault, identity=identity, ctx=who.ctx, record_id=record_id)
        return records.open_content(session, who.vault, identity=identity, ctx=who.ctx, record_id=record_id)

    opened = await as_caller(who, work)
    if isinstance(opened, watermark.PendingDownload):
        size, marked = await run_in_threadpool(watermark.render_stream, who.vault, opened)
        return StreamingResponse(marked, media_type="application/pdf", headers={
            "content-length": str(size), "content-disposition": "attachment", "cache-control": "no-store"})
    view, chunks = opened
    return StreamingResponse(
        chunks,
        media_type=view.content_type,
        headers={"content-length": str(view.size_bytes), "content-disposition": "attachment"},
    )
