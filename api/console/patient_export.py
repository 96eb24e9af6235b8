"""The patient's "export my data" pages (PIPL 45): ask for the export with the password again, choose the package's
passphrase, follow the build, download the package once.

Owns only the browser shape of `POST/GET /v1/exports…`: the same export service (vault/exports/service.py), asked
through `start_reauthenticated` (the password, and the TOTP code if enrolled, as the erasure page asks; a failure is
audited as a denied `export.create` and nothing is built). The progress is a small fragment htmx polls (no inline
script); the package is served once, within 24 hours, as the service enforces. Paths carry the export id only.
Never: stores, logs or echoes the passphrase (the form comes back empty after any error), puts it or the password in a
URL, or serves a package another way than through the service.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from api import disposition
from api.console import i18n
from api.console.pages import PATIENT, field
from api.console.session import Console, open_console, page
from vault.errors import Conflict, InvalidCredentials, InvalidInput, OtpRequired, VaultError
from vault.exports import service as exports
from vault.identity import Identity

router = APIRouter(include_in_schema=False)
PACKAGE_NAME = "healthvault-export.zip"
# What the form says for the refusals it expects; any other error is the error page.
_FORM_ERRORS = (InvalidInput, InvalidCredentials, OtpRequired, Conflict)


def _form_error(console: Console, exc: VaultError) -> str:
    reason = exc.extra.get("reason") if isinstance(exc, InvalidInput) else None
    if reason == "passphrase-mismatch":
        return console.t("pexport.mismatch")
    if reason in ("passphrase", "passphrase_again"):
        return console.t("pexport.weak")
    if isinstance(exc, Conflict):
        return console.t("pexport.busy")
    return i18n.error_text(console.lang, exc)


@router.get("/export")
@page
async def export_form(request: Request) -> Response:
    console = await open_console(request)
    await console.run(lambda _s, identity: identity, roles=PATIENT)
    return console.page("my_export.html", job=None, error=None, min_length=exports.MIN_PASSPHRASE)


@router.post("/export")
@page
async def start_export(request: Request) -> Response:
    console = await open_console(request)

    def work(session, identity: Identity) -> exports.ExportView:
        # Read inside: a too long field is a form error for a signed-in patient, never an answer to anyone else.
        passphrase, again = field(console, "passphrase"), field(console, "passphrase_again")
        if passphrase != again:  # judged before the password is tried: a typo costs no sign-in attempt
            raise InvalidInput("the two passphrases differ", extra={"reason": "passphrase-mismatch"})
        return exports.start_reauthenticated(session, console.vault, identity=identity, ctx=console.ctx,
                                             passphrase=passphrase, password=field(console, "password"),
                                             otp=field(console, "otp") or None)

    try:
        job = await console.run(work, roles=PATIENT)
    except _FORM_ERRORS as exc:
        return console.page("my_export.html", http_status=exc.status, job=None, error=_form_error(console, exc),
                            min_length=exports.MIN_PASSPHRASE)
    return console.redirect(f"/export/{job.export_id}")


@router.get("/export/{package_id}")
@page
async def export_status(request: Request, package_id: uuid.UUID) -> Response:
    """The build's progress; htmx polls the fragment every second until it is done (or failed)."""
    console = await open_console(request)
    pid = str(package_id)

    def work(session, identity: Identity) -> exports.ExportView:
        return exports.get(session, console.vault, identity=identity, ctx=console.ctx, export_id=pid)

    job = await console.run(work, roles=PATIENT)
    template = "my_export_fragment.html" if request.headers.get("hx-request") == "true" else "my_export.html"
    return console.page(template, job=job, error=None, min_length=exports.MIN_PASSPHRASE)


@router.get("/export/{package_id}/download")
@page
async def export_download(request: Request, package_id: uuid.UUID) -> Response:
    """The package, once, within 24 hours of being built (410 afterwards), as `GET /v1/exports/{id}/download`."""
    console = await open_console(request)
    pid = str(package_id)

    def work(session, identity: Identity):
        return exports.open_download(session, console.vault, identity=identity, ctx=console.ctx, export_id=pid)

    size, chunks = await console.run(work, roles=PATIENT)
    return StreamingResponse(chunks, media_type="application/zip", headers={
        "content-length": str(size), "cache-control": "no-store",
        "content-disposition": disposition.attachment(PACKAGE_NAME, fallback=PACKAGE_NAME)})
