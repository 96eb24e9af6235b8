"""The console's public pages (root, language, sign-in and out, registration, first sign-in) and what every page
module shares: the role sets, form-field reading with its limits, the safe redirect target. The patient's pages are
patient_records.py and patient_sharing.py, the staff's staff.py and admin.py.

Owns only the browser shape of what the JSON API already does: every page calls the same vault services (records,
labs, sharing, privacy, auditing, keys, accounts) with the caller's Identity, so the gate decides and audits exactly
as for the API. Paths carry ids only (record, grant, export, a row index); forms post their values in the body.
Never: reads data another way than through a service, or shows a page's data before its service call allowed it.
"""



from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from api.console import i18n, qr
from api.console.session import (
    PRE,
    SESSION,
    Console,
    clear_cookie,
    headers,
    open_console,
    page,
    set_cookie,
)
from vault.accounts import service as accounts
from vault.errors import (
    InvalidInput,
    OtpEnrollmentRequired,
    PasswordChangeRequired,
    VaultError,
)
from vault.identity import Identity
from vault.patients import privacy, realname
from vault.patients import service as patients
from vault.sharing import service as sharing

router = APIRouter(include_in_schema=False)

PATIENT = frozenset({"patient"})
GRANTEES = frozenset(sharing.GRANTEE_ROLES)
READERS = PATIENT | GRANTEES
AUDITORS = frozenset({"auditor", "auditadmin"})
KEY_READERS = AUDITORS | {"secadmin"}
HOME = {"patient": "/records", "doctor": "/shared", "escort": "/shared", "auditor": "/audit",
        "auditadmin": "/audit", "secadmin": "/security", "sysadmin": "/accounts"}
FORM_OVERHEAD = 64 * 1024
INLINE_TYPES = ("image/png", "image/jpeg", "image/webp", "application/pdf")


def _safe_next(value: str | None) -> str:
    """Only a local path (never another origin, never a query string): the sign-in's `next`."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or "?" in value \
            or any(ord(c) < 33 or ord(c) == 127 for c in value):  # browsers drop tabs and newlines: "/\t/evil"
        return "/"
    return value


# Form fields are capped as the JSON API's models cap them (a password is hashed: never an unbounded one).
LIMITS = {"username": 256, "password": 256, "new_password": 256, "real_name": 64, "id_number": 64, "phone": 32,
          "otp": 16, "grantee": 256, "purpose": 500, "reason": 500, "value": 64, "passphrase": 256,
          "passphrase_again": 256}
MAX_FIELD = 1024


def field(console: Console, name: str) -> str:
    value = console.form.get(name)
    if not isinstance(value, str):
        return ""
    if len(value) > LIMITS.get(name, MAX_FIELD):
        raise InvalidInput(f"{name} is too long", extra={"reason": name})
    return value if "pass" in name else value.strip()  # a password or passphrase is exactly what was typed


def list_field(console: Console, name: str) -> list[str]:
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
                        values=dict.fromkeys(("username", "real_name", "phone"), ""),
                        realname=console.vault.realname is not None, challenge=None)


@router.post("/register/code")
@page
async def register_code(request: Request) -> Response:
    """Real-name verification, step one: a code sent to the phone; the form comes back with the challenge in it."""
    console = await open_console(request)
    values = {"username": "", "real_name": "", "phone": field(console, "phone")}
    try:
        challenge = await run_in_threadpool(realname.start_challenge, console.vault, phone=values["phone"],
                                            ctx=console.ctx)
    except VaultError as exc:
        return console.page("register.html", http_status=exc.status, notice=privacy.current_notice(console.vault),
                            error=i18n.error_text(console.lang, exc), values=values, realname=True, challenge=None)
    return console.page("register.html", notice=privacy.current_notice(console.vault), error=None, values=values,
                        realname=True, challenge=challenge)


@router.post("/register")
@page
async def register(request: Request) -> Response:
    console = await open_console(request)
    notice = privacy.current_notice(console.vault)
    values = {k: field(console, k) for k in ("username", "real_name", "phone")}
    challenge = field(console, "realname_challenge") or None
    choices = privacy.Choices(notice_version=field(console, "notice_version") or None,
                              health_data=field(console, "health_data") == "yes",
                              id_number=field(console, "id_number_consent") == "yes",
                              ocr=field(console, "ocr") == "yes")

    def work(session) -> str:
        return patients.register(session, console.vault, username=values["username"],
                                 password=field(console, "password"), real_name=values["real_name"],
                                 id_number=field(console, "id_number"), phone=values["phone"], birth_date=None,
                                 ctx=console.ctx, consents=choices, realname_challenge=challenge,
                                 realname_code=field(console, "realname_code") or None)

    try:
        await console.anonymous(work)
    except VaultError as exc:
        realname_on = console.vault.realname is not None  # the challenge stays in the form (a new code: step one)
        return console.page("register.html", http_status=exc.status, notice=notice,
                            error=i18n.error_text(console.lang, exc), values=values, realname=realname_on,
                            challenge=challenge if realname_on else None)
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
