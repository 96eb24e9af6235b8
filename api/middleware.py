"""Pure-ASGI middleware: request ids, security headers, credentials-in-URL refusal, a PHI-free access log.

Owns what every response carries and what the access log says. The access log names the route template (never the
concrete path, query string, or any header value), so record ids, tokens and PHI never reach it.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import urllib.parse

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem
from vault.errors import CredentialsInUrl

access_log = logging.getLogger("healthvault.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SECRET_PARAMS = frozenset({"password", "passwd", "pwd", "token", "access_token", "otp", "secret", "passphrase",
                            "api_key", "apikey", "authorization", "id_number", "phone"})
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")


class EdgeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = dict(scope.get("headers") or ()).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else secrets.token_hex(12)
        scope.setdefault("state", {})["request_id"] = request_id
        status_holder = {"status": 500}
        extra_headers = [(b"x-request-id", request_id.encode()), *SECURITY_HEADERS]
        if scope.get("scheme") == "https":
            extra_headers.append(HSTS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                own = message.get("headers", [])
                present = {name.lower() for name, _ in own}  # a response's own policy (the console's CSP) wins
                message["headers"] = [*own, *(h for h in extra_headers if h[0] not in present)]
            await send(message)

        query = scope.get("query_string", b"").decode("latin-1")
        names = {k.lower() for k, _ in urllib.parse.parse_qsl(query, keep_blank_values=True)}
        try:
            if names & _SECRET_PARAMS:
                exc = CredentialsInUrl()
                response = problem(Request(scope), status=exc.status, slug=exc.slug, title=exc.title,
                                   detail=exc.detail)
                await response(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            access_log.info("%s %s %s %.1fms rid=%s", scope.get("method"), template, status_holder["status"],
                            (time.perf_counter() - started) * 1000, request_id)
