"""The console's pages: sign-in, the patient's records, labs, sharing and logs; the doctor's shared records and
break-glass; the compliance staff's audit search, exports and key status.

Owns only the browser shape of what the JSON API already does: every page calls the same vault services (records,
labs, sharing, privacy, auditing, keys, accounts) with the caller's Identity, so the gate decides and audits exactly
as for the API. Paths carry ids only (record, grant, export, a row index); forms post their values in the body.
Never: reads data another way than through a service, or shows a page's data before its service call allowed it.
"""


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
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api import multipart
from api.console import charts, i18n, qr
from api.console.session import (
    CONTENT_CSP,
    CSRF_FIELD,
    PRE,
    SESSION,
    Console,
    CsrfFailed,
    check_csrf,
    clear_cookie,
    headers,
    open_console,
    page,
    set_cookie,
)
from vault.accounts import service as accounts
from vault.auditing import trail
from vault.db.models import CATEGORIES
from vault.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    OtpEnrollmentRequired,
    PasswordChangeRequired,
    PayloadTooLarge,
    VaultError,
)
from vault.identity import Identity
from vault.keys import status as keyops
from vault.labs import service as labs
from vault.patients import erasure, privacy
from vault.patients import service as patients
from vault.records import service as records
from vault.records.uploads import UploadSink
from vault.sharing import service as sharing

router = APIRouter(include_in_schema=False)

PATIENT = frozenset({"patient"})
GRANTEES = frozenset(sharing.GRANTEE_ROLES)
READERS = PATIENT | GRANTEES
AUDITORS = frozenset({"auditor", "auditadmin"})
KEY_READERS = AUDITORS | {"secadmin"}
HOME = {"patient": "/records", "doctor": "/shared", "escort": "/shared", "auditor": "/audit",
        "auditadmin": "/audit", "secadmin": "/security", "sysadmin": "/accounts"}
_FORM_OVERHEAD = 64 * 1024
INLINE_TYPES = ("image/png", "image/jpeg", "image/webp", "application/pdf")


def _safe_next(value: str | None) -> str:
    """Only a local path (never another origin, never a query string): the sign-in's `next`."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or "?" in value \
            or any(ord(c) < 33 or ord(c) == 127 for c in value):  # browsers drop tabs and newlines: "/\t/evil"
        return "/"
    return value


# Form fields are capped as the JSON API's models cap them (a password is hashed: never an unbounded one).
LIMITS = {"username": 256, "password": 256, "new_password": 256, "real_name": 64, "id_number": 64, "phone": 32,
          "otp": 16, "grantee": 256, "purpose": 500, "reason": 500, "value": 64}
MAX_FIELD = 1024


def field(console: Console, name: str) -> str:
    value = console.form.get(name)
    if not isinstance(value, str):
        return ""
    if len(value) > LIMITS.get(name, MAX_FIELD):
        raise InvalidInput(f"{name} is too long", extra={"reason": name})
    return value if "password" in name else value.strip()  # a password is exactly what was typed


def _list(console: Console, name: str) -> list[str]:
    value = console.form.get(name)
    if value is None:
        return []
    return [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str) and v]


# ---- public: root, language, sign-in, registration, first sign-in ---------------------------------------------------

@router.get("/")
@page
async def root(request: Request) -> Response:
    console = await open_console(request)
    if console.token is None:
        return headers(RedirectResponse("/login", status_code=303))
    role = await console.run(lambda _s, identity: identity.role)
    return headers(RedirectResponse(HOME.get(role, "/home"), status_code=303))


@router.get("/home")
@page
async def home(request: Request) -> Response:
    console = await open_console(request)
    await console.run(lambda _s, identity: identity.role)
    return console.page("home.html")


@router.get("/lang/{code}")
@page
async def switch_language(request: Request, code: str) -> Response:
    lang = code if code in i18n.LANGS else "zh-CN"
    response = RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
    response.set_cookie(i18n.COOKIE, lang, max_age=365 * 86400, path="/", samesite="strict", httponly=True,
                        secure=request.url.scheme == "https")
    return headers(response)


@router.get("/login")
@page
async def login_form(request: Request) -> Response:
    console = await open_console(request)
    done = request.query_params.get("done")
    return console.page("login.html", next=_safe_next(request.query_params.get("next")), error=None,
                        notice=console.t({"registered": "register.done", "first": "first.done"}.get(done or "", ""))
                        if done in ("registered", "first") else None)


@router.post("/login")
@page
async def login(request: Request) -> Response:
    console = await open_console(request)
    username, password, otp = field(console, "username"), field(console, "password"), field(console, "otp")

    def work(session):
        return accounts.login(session, console.vault, username=username, password=password, ctx=console.ctx,
                              otp=otp or None)

    try:
        token, ttl = await console.anonymous(work)
    except (PasswordChangeRequired, OtpEnrollmentRequired):
        return console.redirect("/first-sign-in")
    except VaultError as exc:
        return console.page("login.html", http_status=exc.status, next=_safe_next(field(console, "next")),
                            error=i18n.error_text(console.lang, exc), notice=None)
    response = console.redirect(_safe_next(field(console, "next")))
    set_cookie(request, response, SESSION, token, max_age=ttl)
    clear_cookie(request, response, PRE)
    return response


@router.post("/logout")
@page
async def logout(request: Request) -> Response:
    console = await open_console(request)
    token = console.token

    def work(session, identity: Identity) -> None:
        accounts.logout(session, console.vault, token=token, identity=identity, ctx=console.ctx)  # type: ignore[arg-type]

    await console.run(work)
    response = console.redirect("/login")
    clear_cookie(request, response, SESSION)
    return response


@router.get("/register")
@page
async def register_form(request: Request) -> Response:
    console = await open_console(request)
    return console.page("register.html", notice=privacy.current_notice(console.vault), error=None,
                        values=dict.fromkeys(("username", "real_name", "phone"), ""))


@router.post("/register")
@page
async def register(request: Request) -> Response:
    console = await open_console(request)
    notice = privacy.current_notice(console.vault)
    values = {k: field(console, k) for k in ("username", "real_name", "phone")}
    choices = privacy.Choices(notice_version=field(console, "notice_version") or None,
                              health_data=field(console, "health_data") == "yes",
                              id_number=field(console, "id_number_consent") == "yes",
                              ocr=field(console, "ocr") == "yes")

    def work(session) -> str:
        return patients.register(session, console.vault, username=values["username"],
                                 password=field(console, "password"), real_name=values["real_name"],
                                 id_number=field(console, "id_number"), phone=values["phone"], birth_date=None,
                                 ctx=console.ctx, consents=choices)

    try:
        await console.anonymous(work)
    except VaultError as exc:
        return console.page("register.html", http_status=exc.status, notice=notice,
                            error=i18n.error_text(console.lang, exc), values=values)
    return console.redirect("/login?done=registered")


@router.get("/first-sign-in")
@page
async def first_form(request: Request) -> Response:
    console = await open_console(request)
    return console.page("first.html", step="password", error=None, message=None, username="", qr_svg=None,
                        secret=None)


@router.post("/first-sign-in/password")
@page
async def first_password(request: Request) -> Response:
    console = await open_console(request)
    username = field(console, "username")

    def work(session) -> None:
        accounts.change_password(session, console.vault, username=username, password=field(console, "password"),
                                 new_password=field(console, "new_password"), otp=field(console, "otp") or None,
                                 ctx=console.ctx)

    try:
        await console.anonymous(work)
    except VaultError as exc:
        return console.page("first.html", http_status=exc.status, step="password", username=username, qr_svg=None,
                            secret=None, error=i18n.error_text(console.lang, exc), message=None)
    return console.page("first.html", step="totp", username=username, error=None, qr_svg=None, secret=None,
                        message=console.t("first.changed"))


@router.post("/first-sign-in/totp")
@page
async def first_totp(request: Request) -> Response:
    console = await open_console(request)
    username = field(console, "username")

    def work(session) -> tuple[str, str]:
        return accounts.totp_enroll(session, console.vault, username=username, password=field(console, "password"),
                                    ctx=console.ctx)

    try:
        secret, uri = await console.anonymous(work)
    except VaultError as exc:
        return console.page("first.html", http_status=exc.status, step="totp", username=username, qr_svg=None,
                            secret=None, error=i18n.error_text(console.lang, exc), message=None)
    return console.page("first.html", step="activate", username=username, qr_svg=qr.svg(uri), secret=secret,
                        error=None, message=None)


@router.post("/first-sign-in/activate")
@page
async def first_activate(request: Request) -> Response:
    console = await open_console(request)
    username = field(console, "username")

    def work(session) -> None:
        accounts.totp_activate(session, console.vault, username=username, password=field(console, "password"),
                               otp=field(console, "otp"), ctx=console.ctx)

    try:
        await console.anonymous(work)
    except VaultError as exc:
        return console.page("first.html", http_status=exc.status, step="activate", username=username, qr_svg=None,
                            secret=None, error=i18n.error_text(console.lang, exc), message=None)
    return console.redirect("/login?done=first")


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
    if declared and declared.isdigit() and int(declared) > limit + _FORM_OVERHEAD:
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
                                                     max_body=limit + _FORM_OVERHEAD, open_sink=open_sink)
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
        for p in labs.trends(session, console.vault, identity=identity, ctx=console.ctx, code=code):
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
        return view, rows, index, points

    view, rows, index, points = await console.run(work, roles=READERS, action="record.read")
    chart = _chart(console, rows[index], points) if index is not None else None
    template = "trend_fragment.html" if request.headers.get("hx-request") == "true" and row_index is not None \
        else "record.html"
    return console.page(template, record=view, rows=rows, row_index=index, chart=chart, points=points,
                        inline=view.content_type in INLINE_TYPES)


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
    """The original, for showing inline in the record page (an image, or a PDF in a same-origin frame)."""
    console = await open_console(request)
    rid = str(record_id)

    def work(session, identity: Identity):
        return records.open_content(session, console.vault, identity=identity, ctx=console.ctx, record_id=rid)

    view, chunks = await console.run(work, roles=READERS, action="record.download")
    inline = view.content_type in INLINE_TYPES
    return StreamingResponse(chunks, media_type=view.content_type, headers={
        "content-length": str(view.size_bytes), "content-disposition": "inline" if inline else "attachment",
        "content-security-policy": CONTENT_CSP + ("" if view.content_type == "application/pdf" else "; sandbox"),
        "cache-control": "no-store", "x-frame-options": "SAMEORIGIN"})


# ---- patient: sharing, access log, consents -------------------------------------------------------------------------

def _grant_state(grant: sharing.GrantView, now: dt.datetime) -> str:
    if grant.revoked_at is not None:
        return "share.revoked"
    expires = grant.expires_at if grant.expires_at.tzinfo else grant.expires_at.replace(tzinfo=dt.UTC)
    return "share.active" if expires > now else "share.expired"


@router.get("/sharing")
@page
async def sharing_page(request: Request) -> Response:
    console = await open_console(request)

    def work(session, identity: Identity):
        grants = sharing.list_grants(session, console.vault, identity=identity, ctx=console.ctx)
        own = records.list_own(session, console.vault, identity=identity, ctx=console.ctx, limit=100)[0] \
            if identity.role == "patient" else []
        return grants, own

    grants, own = await console.run(work, roles=READERS)
    now = console.vault.clock()
    return console.page("sharing.html", grants=grants, own=own, states={g.grant_id: _grant_state(g, now)
                                                                          for g in grants},
                        max_days=console.vault.settings.grant_max_days, error=None)


@router.post("/sharing")
@page
async def share(request: Request) -> Response:
    console = await open_console(request)
    try:
        days = int(field(console, "days") or "7")
    except ValueError:
        raise InvalidInput("days must be a number", extra={"reason": "window"}) from None
    if not 0 <= days <= 3660:  # the service holds the real bound (grant_max_days); this keeps the date arithmetic sane
        raise InvalidInput("days out of range", extra={"reason": "window"})
    record_ids = _list(console, "record_ids")
    for rid in record_ids:
        try:
            uuid.UUID(rid)
        except ValueError:
            raise InvalidInput("unknown record", extra={"reason": "scope"}) from None

    def work(session, identity: Identity) -> sharing.GrantView:
        now = console.vault.clock()
        return sharing.create_grant(
            session, console.vault, identity=identity, ctx=console.ctx, grantee=field(console, "grantee"),
            record_ids=record_ids, categories=[], include_future=False, actions=_list(console, "actions"),
            purpose=field(console, "purpose"), consult_ref=None, not_before=None,
            expires_at=now + dt.timedelta(days=max(days, 0)))

    grant = await console.run(work, roles=PATIENT, action="grant.create")
    return console.redirect(f"/sharing/{grant.grant_id}")


@router.get("/sharing/{grant_id}")
@page
async def grant_page(request: Request, grant_id: uuid.UUID) -> Response:
    console = await open_console(request)
    gid = str(grant_id)

    def work(session, identity: Identity) -> sharing.GrantView:
        sharing.get_grant(session, console.vault, identity=identity, grant_id=gid)  # ownership, or NotFound
        match = [g for g in sharing.list_grants(session, console.vault, identity=identity, ctx=console.ctx)
                 if g.grant_id == gid]
        if not match:
                raise NotFound()
        return match[0]

    grant = await console.run(work, roles=READERS)
    receipt = json.dumps(grant.receipt, ensure_ascii=False, indent=2, sort_keys=True) \
        if isinstance(grant.receipt, dict) else str(grant.receipt)
    return console.page("grant.html", grant=grant, receipt=receipt,
                        state=_grant_state(grant, console.vault.clock()))


@router.post("/sharing/{grant_id}/revoke")
@page
async def revoke(request: Request, grant_id: uuid.UUID) -> Response:
    console = await open_console(request)
    gid = str(grant_id)

    def work(session, identity: Identity) -> sharing.GrantView:
        return sharing.revoke_grant(session, console.vault, identity=identity, ctx=console.ctx, grant_id=gid)

    await console.run(work, roles=PATIENT)
    return console.redirect(f"/sharing/{gid}")


@router.get("/access-log")
@page
async def access_log(request: Request) -> Response:
    console = await open_console(request)
    cursor = request.query_params.get("cursor")
    if cursor is not None and (len(cursor) > 20 or not cursor.isdigit()):
        raise InvalidInput("Invalid cursor")

    def work(session, identity: Identity):
        return trail.access_log(session, console.vault, identity=identity, ctx=console.ctx, limit=50, cursor=cursor)

    entries, next_cursor = await console.run(work, roles=PATIENT)
    return console.page("access_log.html", entries=entries, next_cursor=next_cursor)


@router.get("/consents")
@page
async def consents_page(request: Request) -> Response:
    console = await open_console(request)

    def work(session, identity: Identity) -> privacy.ConsentState:
        return privacy.view(session, console.vault, identity=identity, ctx=console.ctx)

    state = await console.run(work, roles=PATIENT)
    return console.page("consents.html", state=state, items=privacy.CONSENT_ITEMS)


@router.post("/consents")
@page
async def change_consent(request: Request) -> Response:
    console = await open_console(request)
    item = field(console, "item")
    if item not in privacy.CONSENT_ITEMS:
        raise InvalidInput("unknown consent item", extra={"reason": "item"})
    give = field(console, "give") == "yes"
    choices = privacy.Choices(notice_version=privacy.current_notice(console.vault).version if give else None,
                              **{item: give})

    def work(session, identity: Identity) -> None:
        privacy.change(session, console.vault, identity=identity, ctx=console.ctx, choices=choices)

    await console.run(work, roles=PATIENT)
    return console.redirect("/consents")


@router.get("/account")
@page
async def account_page(request: Request) -> Response:
    """The patient's own profile (ID number and phone masked) and erasure."""
    console = await open_console(request)

    def work(session, identity: Identity) -> patients.Profile:
        return patients.get_profile(session, console.vault, identity=identity, ctx=console.ctx,
                                    patient_id=str(identity.patient_id))

    profile = await console.run(work, roles=PATIENT)
    return console.page("account.html", profile=profile, report=None, error=None)


@router.post("/account/erase")
@page
async def erase_account(request: Request) -> Response:
    """Erasure by crypto-shredding, after the password (and the TOTP code if enrolled) again. Cannot be undone."""
    console = await open_console(request)
    password, otp = field(console, "password"), field(console, "otp")
    if field(console, "confirm") != "yes":
        raise InvalidInput("tick the box to confirm the erasure", extra={"reason": "confirm"})

    def work(session, identity: Identity) -> erasure.ErasureReport:
        return erasure.erase_self(session, console.vault, identity=identity, ctx=console.ctx, password=password,
                                  otp=otp or None)

    report = await console.run(work, roles=PATIENT)
    console.identity = None
    response = console.page("account.html", profile=None, report=report, error=None)
    clear_cookie(request, response, SESSION)
    return response


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
        raise Conflict("The export is not finished", extra={"status": job.status})

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
