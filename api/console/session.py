"""The console's edge: cookie session, CSRF, response headers, language, errors rendered as pages.

Owns carrying the API's own server-side token (vault/accounts/tokens) in a cookie — `HttpOnly`, `SameSite=Strict`,
`Secure` with the `__Host-` prefix under TLS — and the CSRF check on every state-changing request: the token a page
embeds is an HMAC of the session token (or, before sign-in, of a random pre-session cookie), sent back as the
`X-CSRF-Token` header (htmx) or the `csrf` form field, compared in constant time. Every console response carries the
strict CSP (no inline script or style, `frame-ancestors 'none'`); pages with PHI carry `Cache-Control: no-store`
(every console page does: the middleware's default is kept).

Never: reads a credential from the URL, puts PHI in a URL or a cookie, decides access (the vault services and the
gate do), or keeps any state of its own (a signed-out token is revoked server-side by accounts.logout).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.console import i18n
from api.console.render import render
from vault.accounts import tokens
from vault.errors import Forbidden, Unauthenticated, VaultError
from vault.identity import Identity, RequestContext
from vault.patients import privacy

if TYPE_CHECKING:
    from vault.runtime import Vault

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-src 'self'; frame-ancestors 'none'")
# The original file shown inline in a record page (an <img> or a same-origin <iframe> for a PDF): never a document
# that runs anything; only the console itself may frame it.
CONTENT_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox; frame-ancestors 'self'"
SESSION = "hv_session"
PRE = "hv_pre"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CSRF_LABEL = b"healthvault console csrf v1\0"


def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def cookie_name(request: Request, base: str) -> str:
    """`__Host-` names need Secure, Path=/ and no Domain: used exactly when the console is served over TLS."""
    return f"__Host-{base}" if secure(request) else base


def set_cookie(request: Request, response: Response, base: str, value: str, *, max_age: int | None = None) -> None:
    response.set_cookie(cookie_name(request, base), value, max_age=max_age, path="/", secure=secure(request),
                        httponly=True, samesite="strict")


def clear_cookie(request: Request, response: Response, base: str) -> None:
    response.delete_cookie(cookie_name(request, base), path="/", secure=secure(request), httponly=True,
                           samesite="strict")


def session_token(request: Request) -> str | None:
    return request.cookies.get(cookie_name(request, SESSION)) or None


def csrf_for(secret: str) -> str:
    return hmac.new(_CSRF_LABEL, secret.encode("ascii", "replace"), hashlib.sha256).hexdigest()


R = TypeVar("R", bound=Response)


def headers(response: R) -> R:
    response.headers["content-security-policy"] = CSP
    response.headers["cache-control"] = "no-store"
    response.headers["x-frame-options"] = "DENY"
    return response


class LoginRequired(Exception):
    """No live session: pages redirect to the sign-in page, htmx and form posts get 401."""


class CsrfFailed(Exception):
    """A state-changing request without the right CSRF token: 403, nothing done."""


@dataclasses.dataclass
class Console:
    """One console request: the vault, its context, the language, the CSRF token, and (once resolved) the caller."""

    request: Request
    vault: Vault
    ctx: RequestContext
    lang: str
    token: str | None
    csrf: str
    pre: str | None = None  # a pre-session secret minted by this request (set as a cookie on the response)
    identity: Identity | None = None
    form: dict[str, Any] = dataclasses.field(default_factory=dict)
    csrf_in_body: bool = False

    def t(self, key: str) -> str:
        return i18n.text(self.lang, key)

    async def run(self, work: Callable[[Session, Identity], Any], *, roles: frozenset[str] | None = None,
                  action: str | None = None) -> Any:
        """Resolve the session token and run `work(session, identity)` in one database session off the loop.

        `action`: the processing this page does for a patient (PIPL-1, as api/deps.PROCESSING): a patient without the
        consents gets 403 consent-required, audited, before anything is read. `roles`: who the page is for (the
        services and the gate decide access to data; this keeps a page from showing another role's forms)."""
        if self.token is None:
            raise LoginRequired()
        token, vault, ctx = self.token, self.vault, self.ctx

        reading = self.request.method in SAFE_METHODS
        lane = self.request.app.state.db_lane

        def unit() -> Any:
            # A page view is a hot read: on the database lane, like the JSON record reads (one batch, one commit,
            # on SQLite on the event loop); a state change runs in a session of its own in the thread pool.
            with (lane.session() if reading else vault.session()) as session:
                try:
                    identity = tokens.resolve(session, token=token, now=vault.clock(),
                                              idle_timeout_seconds=vault.settings.idle_timeout_seconds)
                except Unauthenticated:
                    raise LoginRequired() from None
                self.identity = identity
                if roles is not None and identity.role not in roles:
                    raise Forbidden("This page is not for your role")
                if action is not None:
                    privacy.require_processing_consent(session, vault, identity=identity, ctx=ctx, action=action)
                return work(session, identity)

        return await (lane.run(unit) if reading else run_in_threadpool(unit))

    async def anonymous(self, work: Callable[[Session], Any]) -> Any:
        vault = self.vault

        def unit() -> Any:
            with vault.session() as session:
                return work(session)

        return await run_in_threadpool(unit)

    def page(self, template: str, http_status: int = 200, **values: Any) -> HTMLResponse:
        html = render(template, lang=self.lang, csrf=self.csrf, identity=self.identity,
                      htmx=self.request.headers.get("hx-request") == "true", path=self.request.url.path, **values)
        response = HTMLResponse(html, status_code=http_status)
        if self.pre:
            set_cookie(self.request, response, PRE, self.pre)
        return headers(response)

    def redirect(self, url: str) -> Response:
        """After a form post: 303 for a plain form, `HX-Redirect` for htmx (which follows a 303 into the swap)."""
        if self.request.headers.get("hx-request") == "true":
            response: Response = Response(status_code=204, headers={"hx-redirect": url})
        else:
            response = RedirectResponse(url, status_code=303)
        return headers(response)


def _context(request: Request) -> RequestContext:
    client = request.client.host if request.client else None
    agent = request.headers.get("user-agent")
    return RequestContext(request_id=getattr(request.state, "request_id", None), client_addr=client,
                          user_agent=agent[:256] if agent else None)


def check_csrf(console: Console, sent: str | None) -> bool:
    """The token sent back matches this session's (never before sign-in's pre-session cookie was set)."""
    if console.pre or not sent:
        return False
    return hmac.compare_digest(sent.encode("ascii", "replace"), console.csrf.encode())


async def open_console(request: Request, *, multipart: bool = False) -> Console:
    """Build the request's Console and enforce CSRF on anything but GET/HEAD (a multipart upload checks its header
    here and is read by the route itself)."""
    token = session_token(request)
    pre_cookie = request.cookies.get(cookie_name(request, PRE))
    pre = None
    if token is None and pre_cookie is None:
        pre = pre_cookie = secrets.token_urlsafe(32)
    secret = token or pre_cookie or ""
    console = Console(request=request, vault=request.app.state.vault, ctx=_context(request),
                      lang=i18n.choose(request), token=token, csrf=csrf_for(secret), pre=pre)
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER)
        if not multipart:
            form = await request.form(max_files=0, max_fields=64)
            console.form = {k: form.getlist(k) if len(form.getlist(k)) > 1 else form.get(k) for k in form}
            if sent is None and isinstance(console.form.get(CSRF_FIELD), str):
                sent = console.form[CSRF_FIELD]
        elif sent is None and not pre:
            console.csrf_in_body = True  # a plain upload form: its `csrf` field is checked before anything is kept
            return console
        if not check_csrf(console, sent):
            raise CsrfFailed()
    return console


def page(handler: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Wrap a console route: vault errors become an error page with the same status, a missing session a redirect
    to sign-in (a 401 for posts and htmx), a failed CSRF check a 403. FastAPI reads the wrapped signature."""

    @functools.wraps(handler)
    async def wrapper(request: Request, *args: Any, **kwargs: Any) -> Response:
        lang = i18n.choose(request)
        try:
            return await handler(request, *args, **kwargs)
        except LoginRequired:
            if request.method in SAFE_METHODS and request.headers.get("hx-request") != "true":
                target = request.url.path
                return headers(RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303))
            return _error(request, lang, 401, i18n.text(lang, "error.signin"))
        except CsrfFailed:
            return _error(request, lang, 403, i18n.text(lang, "error.csrf"))
        except VaultError as exc:
            return _error(request, lang, exc.status, i18n.error_text(lang, exc))

    return wrapper


def _error(request: Request, lang: str, status: int, message: str) -> HTMLResponse:
    html = render("error.html", lang=lang, csrf="", identity=None, status=status, message=message,
                  htmx=request.headers.get("hx-request") == "true", path=request.url.path)
    return headers(HTMLResponse(html, status_code=status))
