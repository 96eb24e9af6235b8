"""The patient's sharing pages: grants (give with scope, purpose and window; the receipt; revoke in one click), the
access log ("who read my records"), the separate consents, and the account page with erasure (re-authenticated).

Owns only the browser shape: every page calls the sharing, auditing, privacy and erasure services with the caller's
Identity. Never: reads data another way than through a service.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.console.pages import (
    PATIENT,
    READERS,
    field,
    list_field,
)
from api.console.session import (
    SESSION,
    clear_cookie,
    open_console,
    page,
)
from vault.auditing import trail
from vault.errors import (
    InvalidInput,
    NotFound,
)
from vault.identity import Identity
from vault.patients import erasure, privacy
from vault.patients import service as patients
from vault.records import service as records
from vault.sharing import receipt
from vault.sharing import service as sharing

router = APIRouter(include_in_schema=False)


# ---- patient: sharing, access log, consents -------------------------------------------------------------------------

def _grant_state(grant: sharing.GrantView, now: dt.datetime) -> str:
    if grant.revoked_at is not None:
        return "share.revoked"
    expires = grant.expires_at if grant.expires_at.tzinfo else grant.expires_at.replace(tzinfo=dt.UTC)
    if expires <= now:
        return "share.expired"
    starts = grant.not_before if grant.not_before.tzinfo else grant.not_before.replace(tzinfo=dt.UTC)
    return "share.pending" if starts > now else "share.active"


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
    record_ids = list_field(console, "record_ids")
    for rid in record_ids:
        try:
            uuid.UUID(rid)
        except ValueError:
            raise InvalidInput("unknown record", extra={"reason": "scope"}) from None

    def work(session, identity: Identity) -> sharing.GrantView:
        now = console.vault.clock()
        return sharing.create_grant(
            session, console.vault, identity=identity, ctx=console.ctx, grantee=field(console, "grantee"),
            record_ids=record_ids, categories=[], include_future=False, actions=list_field(console, "actions"),
            purpose=field(console, "purpose"), consult_ref=None, not_before=None,
            expires_at=now + dt.timedelta(days=max(days, 0)))

    grant = await console.run(work, roles=PATIENT, action="grant.create")
    return console.redirect(f"/sharing/{grant.grant_id}")


@router.get("/sharing/{grant_id}")
@page
async def grant_page(request: Request, grant_id: uuid.UUID) -> Response:
    console = await open_console(request)
    gid = str(grant_id)

    def work(session, identity: Identity) -> tuple[sharing.GrantView, dict | None]:
        match = [g for g in sharing.list_grants(session, console.vault, identity=identity, ctx=console.ctx)
                 if g.grant_id == gid]  # the caller's grants only (given or received), or NotFound
        if not match:
            raise NotFound()
        # The receipt through its own gated, audited read (a grantee's view has none once the grant is not live).
        signed = None if match[0].receipt is None else receipt.get_receipt(
            session, console.vault, identity=identity, ctx=console.ctx, grant_id=gid)
        return match[0], signed

    grant, signed = await console.run(work, roles=READERS)
    text = json.dumps(signed, ensure_ascii=False, indent=2, sort_keys=True) if signed is not None else None
    return console.page("grant.html", grant=grant, receipt=text, state=_grant_state(grant, console.vault.clock()))


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
