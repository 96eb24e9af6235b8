"""RFC 9457 problem+json responses.

Owns the one shape every error takes on the wire, with a stable `type` per failure. Nothing here may echo request
input: validation errors list locations and messages, never the submitted values (which may be passwords or PHI).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from kms import CryptoError, KeyStoreError
from vault.errors import PROBLEM_BASE, AuditUnavailable, IntegrityFailure, VaultError

MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("healthvault.api")

_HTTP_SLUGS = {400: "bad-request", 401: "unauthenticated", 403: "forbidden", 404: "not-found",
               405: "method-not-allowed", 406: "not-acceptable", 413: "payload-too-large",
               415: "unsupported-media-type", 429: "too-many-requests"}


_STANDARD_MEMBERS = frozenset({"type", "title", "status", "detail", "instance", "request_id"})


def problem(request: Request, *, status: int, slug: str, title: str, detail: str | None = None,
            extra: dict | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"type": PROBLEM_BASE + slug, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body["instance"] = request.url.path
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    if extra:  # never over a standard member: `status` stays the HTTP status (RFC 9457 §3.1), found by the fuzzer
        body.update((key, value) for key, value in extra.items() if key not in _STANDARD_MEMBERS)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


async def _vault_error(request: Request, exc: VaultError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.status == 429 and isinstance(exc.extra.get("retry_after"), int):
        headers = {"Retry-After": str(exc.extra["retry_after"])}
    if exc.status >= 500:
        log.error("request failed: %s", exc.slug)
    return problem(request, status=exc.status, slug=exc.slug, title=exc.title, detail=exc.detail,
                   extra=exc.extra, headers=headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    return problem(request, status=422, slug="validation-error", title="The request is not valid",
                   detail="One or more fields are invalid", extra={"errors": errors})


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    slug = _HTTP_SLUGS.get(exc.status_code, "http-error")
    detail = exc.detail if isinstance(exc.detail, str) else None
    return problem(request, status=exc.status_code, slug=slug, title=detail or slug.replace("-", " ").capitalize(),
                   headers=getattr(exc, "headers", None))


async def _crypto_error(request: Request, exc: Exception) -> JSONResponse:
    return await _vault_error(request, IntegrityFailure())


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Only the exception class is logged: messages may carry driver text with bound values.
    log.error("unhandled %s", type(exc).__name__)
    if isinstance(exc, KeyStoreError):
        return await _vault_error(request, AuditUnavailable("The key service is unavailable"))
    return problem(request, status=500, slug="internal", title="Internal error")


# Every error on the wire, as OpenAPI declares it: the 422 of each operation and its `default` response.
PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
    },
    "additionalProperties": True,
}
_PROBLEM_RESPONSE = {"content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def declare_problems(document: dict) -> dict:
    """The OpenAPI document with the errors as they are served: a `Problem` component, every operation's 422 and
    `default` response as problem+json (FastAPI would declare its own HTTPValidationError, which is never sent)."""
    document.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    document["components"]["schemas"].pop("HTTPValidationError", None)
    document["components"]["schemas"].pop("ValidationError", None)
    for item in document.get("paths", {}).values():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            responses["422"] = {"description": "The request is not valid", **_PROBLEM_RESPONSE}
            responses["default"] = {"description": "An RFC 9457 problem", **_PROBLEM_RESPONSE}
    return document


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = declare_problems(generate())
        return app.openapi_schema

    return openapi


def install(app: FastAPI) -> None:
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    # Starlette types a handler as taking any Exception; each of these takes the class it is registered for.
    app.add_exception_handler(VaultError, _vault_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(CryptoError, _crypto_error)
    app.add_exception_handler(Exception, _unexpected)
