"""The record pages: the patient's record list, upload with progress, the record page (also a doctor's or escort's
consult view) with its lab values, corrections and their history, the trend chart, OCR status and re-reading, the
original file inline, and the download (the patient's original; a grantee's watermarked copy).

Owns only the browser shape: every page calls the records and labs services with the caller's Identity, so the gate
decides and audits exactly as for the JSON API. Paths carry ids and row indexes only.
Never: reads data another way than through a service, or shows a page's data before its service call allowed it.
"""

from __future__ import annotations

import mimetypes
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api import disposition, multipart
from api.console import charts
from api.console.pages import (
    FORM_OVERHEAD,
    INLINE_TYPES,
    PATIENT,
    READERS,
    field,
)
from api.console.session import (
    CONTENT_CSP,
    CSRF_FIELD,
    Console,
    CsrfFailed,
    check_csrf,
    open_console,
    page,
)
from vault.db.models import CATEGORIES
from vault.errors import (
    InvalidInput,
    PayloadTooLarge,
    VaultError,
)
from vault.identity import Identity
from vault.labs import service as labs
from vault.records import service as records
from vault.records import watermark
from vault.records.uploads import UploadSink
from vault.sharing import service as sharing

router = APIRouter(include_in_schema=False)


# ---- patient: records, upload, record page, labs ---------------------------------------------------------------------

@router.get("/records")
@page
async def record_list(request: Request) -> Response:
    console = await open_console(request)
    cursor = request.query_params.get("cursor")
    if cursor is not None and len(cursor) > 512:
        raise InvalidInput("Invalid cursor")

    def work(session, identity: Identity):
        return records.list_own(session, console.vault, identity=identity, ctx=console.ctx, limit=20, cursor=cursor)

    views, next_cursor = await console.run(work, roles=PATIENT, action="record.list")
    return console.page("records.html", records=views, next_cursor=next_cursor, categories=CATEGORIES)


@router.post("/records")
@page
async def upload(request: Request) -> Response:
    console = await open_console(request, multipart=True)
    vault = console.vault
    limit = vault.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise PayloadTooLarge(f"Files may be at most {limit} bytes")
    record_id = str(uuid.uuid4())

    def precheck(session, identity: Identity) -> Identity:
        records.authorize_upload(session, vault, identity=identity, ctx=console.ctx, record_id=record_id,
                                 patient_id=identity.patient_id)
        return identity

    identity: Identity = await console.run(precheck, roles=PATIENT, action="record.create")
    patient_id = str(identity.patient_id)  # a patient (the role check and the gate above): never None here

    def open_sink(declared_type: str | None) -> UploadSink:
        return UploadSink(vault, record_id=record_id, patient_id=patient_id, declared_type=declared_type,
                          max_bytes=limit)

    sink, fields, filename = await multipart.receive(request.headers.get("content-type", ""), request.stream(),
                                                     max_body=limit + FORM_OVERHEAD, open_sink=open_sink)
    try:
        if console.csrf_in_body and not check_csrf(console, fields.get(CSRF_FIELD)):
            raise CsrfFailed()
        unknown = set(fields) - {"category", "title", CSRF_FIELD}
        if unknown:
            raise InvalidInput("Unknown form fields", extra={"reason": "form", "fields": sorted(unknown)})

        def commit() -> records.RecordView:
            with vault.session() as session:
                return records.create(session, vault, identity=identity, ctx=console.ctx, sink=sink,
                                      category=fields.get("category", ""), title=fields.get("title") or None,
                                      filename=filename)

        view = await run_in_threadpool(commit)
    finally:
        sink.abort()
    return console.redirect(f"/records/{view.record_id}")


def _rows(view: records.RecordView) -> list[dict]:
    report = view.lab_results or {}
    return list(report.get("results") or [])


def _default_row(rows: list[dict]) -> int | None:
    numeric = [i for i, r in enumerate(rows) if r.get("value_num") is not None and (r.get("std_code") or r.get("code"))]
    flagged = [i for i in numeric if rows[i].get("flag") in ("H", "L")]
    chosen = flagged or numeric
    return chosen[0] if chosen else None


def _trend_points(console: Console, session, identity: Identity, view: records.RecordView,
                  row: dict) -> list[charts.Point]:
    """The analyte across reports: the patient's own trend service, or for a doctor/escort the records shared with
    them of the same patient (each read through the gate, as a record read)."""
    code = str(row.get("std_code") or row.get("code") or "")
    if not code:
        return []
    points: list[charts.Point] = []
    if identity.role == "patient":
        opened = {view.record_id: view.lab_results} if view.lab_results else None  # read above: not decrypted again
        for p in labs.trends(session, console.vault, identity=identity, ctx=console.ctx, code=code, opened=opened):
            if p.value_num is not None:
                points.append(charts.Point(p.at[:10], p.value_num, p.flag))
        return points
    shared = sharing.shared_with_me(session, console.vault, identity=identity, ctx=console.ctx)
    seen: set[str] = set()
    for item in shared:
        if item.patient_id != view.patient_id or item.record_id in seen:
            continue
        seen.add(item.record_id)
        other = view if item.record_id == view.record_id else records.read(
            session, console.vault, identity=identity, ctx=console.ctx, record_id=item.record_id)
        header = (other.lab_results or {}).get("header") or {}
        at = header.get("collected_at") or header.get("reported_at") or other.created_at.isoformat()
        for r in _rows(other):
            if code.upper() in {str(r.get("std_code") or "").upper(), str(r.get("code") or "").upper()} \
                    and r.get("value_num") is not None:
                points.append(charts.Point(str(at)[:10], float(r["value_num"]), r.get("flag")))
    return sorted(points, key=lambda p: p.label)


def _chart(console: Console, row: dict, points: list[charts.Point]):
    if len(points) < 1:
        return None
    name = str(row.get("name") or row.get("code") or "")
    return charts.trend_svg(points, title=f"{console.t('trend.title')}: {name}", unit=row.get("unit"),
                            low=row.get("ref_low"), high=row.get("ref_high"), band_label=console.t("trend.band"))


async def _record_page(request: Request, record_id: uuid.UUID, row_index: int | None) -> Response:
    console = await open_console(request)
    rid = str(record_id)

    def work(session, identity: Identity):
        view = records.read(session, console.vault, identity=identity, ctx=console.ctx, record_id=rid)
        rows = _rows(view)
        index = _default_row(rows) if row_index is None else row_index
        if index is not None and not 0 <= index < len(rows):
            raise InvalidInput("No such row", extra={"reason": "row"})
        points: list[charts.Point] = []
        if index is not None and (identity.role != "patient" or view.ocr_status != records.DECLINED):
            try:
                points = _trend_points(console, session, identity, view, rows[index])
            except VaultError:
                points = []
        # The owner may always take the file; a doctor or escort only under a grant (or claim) that covers downloads.
        can_download = identity.role == "patient" or records.allows(
            session, console.vault, identity=identity, ctx=console.ctx, record_id=rid, action="record.download")
        # A grantee's inline copy is the watermarked PDF (in a frame), whatever the original's type.
        inline_pdf = view.content_type == "application/pdf" or identity.role != "patient"
        return view, rows, index, points, can_download, inline_pdf

    view, rows, index, points, can_download, inline_pdf = await console.run(work, roles=READERS,
                                                                            action="record.read")
    chart = _chart(console, rows[index], points) if index is not None else None
    template = "trend_fragment.html" if request.headers.get("hx-request") == "true" and row_index is not None \
        else "record.html"
    return console.page(template, record=view, rows=rows, row_index=index, chart=chart, points=points,
                        inline=can_download and view.content_type in INLINE_TYPES, inline_pdf=inline_pdf,
                        can_download=can_download)


@router.get("/records/{record_id}")
@page
async def record_page(request: Request, record_id: uuid.UUID) -> Response:
    return await _record_page(request, record_id, None)


@router.get("/records/{record_id}/trend/{row}")
@page
async def record_trend(request: Request, record_id: uuid.UUID, row: int) -> Response:
    return await _record_page(request, record_id, row)


@router.get("/records/{record_id}/status")
@page
async def record_status(request: Request, record_id: uuid.UUID) -> Response:
    """Polled by the record page while the sheet is being read: when it is, htmx reloads the page."""
    console = await open_console(request)
    rid = str(record_id)

    def work(session, identity: Identity) -> str | None:
        record, _dek = records.get_or_raise(session, console.vault, identity=identity, ctx=console.ctx,
                                            record_id=rid, action="record.read")
        return record.ocr_status

    status = await console.run(work, roles=READERS, action="record.read")
    response = console.page("status_fragment.html", status=status, record_id=rid)
    if status != "pending":
        response.headers["hx-refresh"] = "true"
    return response


@router.get("/records/{record_id}/history")
@page
async def record_history(request: Request, record_id: uuid.UUID) -> Response:
    console = await open_console(request)
    rid = str(record_id)

    def work(session, identity: Identity) -> list[dict]:
        record, dek = records.get_or_raise(session, console.vault, identity=identity, ctx=console.ctx,
                                           record_id=rid, action="lab.read")
        labs.ensure_not_declined(record)
        return labs.history(session, record=record, dek=dek)

    history = await console.run(work, roles=PATIENT, action="lab.read")
    return console.page("history.html", history=history, record_id=rid)


@router.post("/records/{record_id}/values")
@page
async def correct_value(request: Request, record_id: uuid.UUID) -> Response:
    console = await open_console(request)
    rid = str(record_id)
    try:
        row = int(field(console, "row"))
    except ValueError:
        raise InvalidInput("row must be a number", extra={"reason": "row"}) from None
    column = field(console, "field") or "value"
    value = field(console, "value")
    if not value or len(value) > 64:
        raise InvalidInput("value must be 1-64 characters", extra={"reason": "value"})

    def work(session, identity: Identity) -> dict:
        return labs.correct(session, console.vault, identity=identity, ctx=console.ctx, record_id=rid, row=row,
                            field=column, value=value)

    await console.run(work, roles=PATIENT, action="lab.correct")
    return console.redirect(f"/records/{rid}/trend/{row}")


@router.post("/records/{record_id}/extraction")
@page
async def request_extraction(request: Request, record_id: uuid.UUID) -> Response:
    """Read this lab sheet (again): after giving the OCR consent late, or after a failure."""
    console = await open_console(request)
    rid = str(record_id)

    def work(session, identity: Identity) -> str:
        return labs.request_extraction(session, console.vault, identity=identity, ctx=console.ctx, record_id=rid)

    await console.run(work, roles=PATIENT, action="record.update")
    return console.redirect(f"/records/{rid}")


@router.get("/records/{record_id}/content")
@page
async def record_content(request: Request, record_id: uuid.UUID) -> Response:
    """The file shown inline in the record page (an image, or a PDF in a same-origin frame). What a grantee sees is
    the watermarked PDF with a download id of its own, as from the download link: an inline view is a copy too."""
    return await _send_file(request, str(record_id), inline=True)


@router.get("/records/{record_id}/download")
@page
async def record_download(request: Request, record_id: uuid.UUID) -> Response:
    """Take the file away. The patient gets the original, byte for byte; a doctor or escort a watermarked PDF with a
    download id of its own: the same services as `GET /v1/records/{id}/content` (vault/records/watermark.py: the
    gate decides `record.download`, the event carrying the id is committed before anything is decrypted)."""
    return await _send_file(request, str(record_id), inline=False)


async def _send_file(request: Request, rid: str, *, inline: bool) -> Response:
    console = await open_console(request)

    def work(session, identity: Identity):
        if identity.role != "patient":
            return watermark.authorize(session, console.vault, identity=identity, ctx=console.ctx, record_id=rid)
        return records.open_content(session, console.vault, identity=identity, ctx=console.ctx, record_id=rid)

    opened = await console.run(work, roles=READERS, action="record.download")
    if isinstance(opened, watermark.PendingDownload):
        size, marked = await run_in_threadpool(watermark.render_stream, console.vault, opened)
        name = f"healthvault-{rid[:8]}-{opened.download_id[:8]}.pdf"  # never the patient's own file name
        return StreamingResponse(marked, media_type="application/pdf", headers={
            "content-length": str(size), "cache-control": "no-store",
            **(_INLINE_HEADERS["application/pdf"] if inline else
               {"content-disposition": disposition.attachment(name, fallback=name)})})
    view, chunks = opened
    if inline and view.content_type in INLINE_TYPES:
        headers = _INLINE_HEADERS["application/pdf" if view.content_type == "application/pdf" else "image"]
    else:
        headers = {"content-disposition": disposition.attachment(
            view.filename, fallback=f"record-{rid[:8]}{mimetypes.guess_extension(view.content_type) or ''}")}
    return StreamingResponse(chunks, media_type=view.content_type, headers={
        "content-length": str(view.size_bytes), "cache-control": "no-store", **headers})


# Inline files: a PDF may run the browser's viewer in a same-origin frame; an image is sandboxed outright.
_INLINE_HEADERS = {
    "application/pdf": {"content-disposition": "inline", "content-security-policy": CONTENT_CSP,
                        "x-frame-options": "SAMEORIGIN"},
    "image": {"content-disposition": "inline", "content-security-policy": CONTENT_CSP + "; sandbox",
              "x-frame-options": "SAMEORIGIN"},
}
