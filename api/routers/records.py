import uuid

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api import multipart
from api.deps import Caller, as_caller, caller, current_identity, get_ctx, get_vault, record_path
from api.schemas import RecordOut, RecordPage
from vault.errors import InvalidInput, PayloadTooLarge
from vault.identity import Identity, RequestContext
from vault.records import service as records
from vault.records import watermark
from vault.records.uploads import UploadSink
from vault.runtime import Vault

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


def _out(view: records.RecordView) -> RecordOut:
    return RecordOut(**{k: v for k, v in view.__dict__.items() if k != "patient_id"})


@router.post("", status_code=201, response_model=RecordOut, openapi_extra=_UPLOAD_BODY)
async def upload(request: Request, identity: Identity = Depends(current_identity), vault: Vault = Depends(get_vault),
                 ctx: RequestContext = Depends(get_ctx)) -> RecordOut:
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
    return _out(view)


@router.get("", response_model=RecordPage)
async def list_records(limit: int = Query(50, ge=1, le=records.MAX_PAGE),
                       cursor: str | None = Query(None, max_length=512), who: Caller = Depends(caller)) -> RecordPage:
    def work(session, identity) -> RecordPage:
        views, next_cursor = records.list_own(session, who.vault, identity=identity, ctx=who.ctx, limit=limit,
                                              cursor=cursor)
        return RecordPage(items=[_out(v) for v in views], next_cursor=next_cursor)

    return await as_caller(who, work)


# The record reads declare no FastAPI parameter or dependency. They are the hottest routes, and with the reads running
# on the event loop, FastAPI's solving of the path parameter and the `caller` dependency took ~8 % of its time
# (docs/performance.md). `record_path` keeps the contract: the same 401 before the same 422 problem for an id that is
# not a UUID, the same OpenAPI entry.
_RECORD_ID = {"parameters": [{"in": "path", "name": "record_id", "required": True,
                              "schema": {"format": "uuid", "title": "Record Id", "type": "string"}}],
              "responses": {"422": {"description": "Validation Error", "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}}}


@router.get("/{record_id}", response_model=RecordOut, openapi_extra=_RECORD_ID)
async def get_record(request: Request) -> RecordOut:
    who, record_id = record_path(request)

    def work(session, identity) -> Response:
        # Serialised once here (FastAPI would validate the returned model against response_model a second time).
        view = records.read(session, who.vault, identity=identity, ctx=who.ctx, record_id=record_id)
        return Response(_out(view).model_dump_json(), media_type="application/json")

    return await as_caller(who, work)


@router.get("/{record_id}/content", response_class=StreamingResponse, openapi_extra=_RECORD_ID)
async def get_content(request: Request) -> StreamingResponse:
    who, record_id = record_path(request)

    def work(session, identity):
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
