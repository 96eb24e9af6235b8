"""FastAPI dependencies: the running vault, the request context and the caller's identity.

Owns reading credentials from the Authorization header only (never cookies or the URL). Dependencies that touch no
I/O are `async def` on purpose: FastAPI runs every plain `def` dependency in the thread pool, one hop each. Identity
resolution hits the token table on every request so that a revoked or expired token fails on the very next request
in every worker.

Separate consent (PIPL-1): every patient route names the processing it does (`PROCESSING`, keyed by method and
route template) or is exempt. The check happens where the caller is resolved, with the action read from the matched
route: a patient without both consents on the current privacy notice gets 403 `consent-required` (audited as a denial
of that action, committed before the 403) before the route does anything. `as_caller` (the hot reads) resolves and
checks in the same session as the route's own work. `current_identity` (every other route) resolves and checks in a
short session of its own that ends before the route opens its session, so a route sees the identity as it was a
moment earlier: a token revoked between the two is caught on the next request. Routes a patient must always reach
(their profile, access log, consents, withdrawing grants, erasure) are in `CONSENT_EXEMPT`; a test keeps the two
lists covering every patient route.

Routes take what they need through the `Annotated` aliases below (`CurrentIdentity`, `VaultDep`, `Ctx`,
`BearerToken`, `CallerDep`) rather than repeating `Depends(...)` in each signature.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Annotated

import pydantic
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vault.accounts import tokens
from vault.db.fastpath import DatabaseLane
from vault.errors import Unauthenticated
from vault.identity import Identity, RequestContext
from vault.patients import privacy
from vault.runtime import Vault

# Route → the audited action a patient's consent must cover.
PROCESSING: dict[tuple[str, str], str] = {
    ("POST", "/v1/records"): "record.create",
    ("GET", "/v1/records"): "record.list",
    ("GET", "/v1/records/{record_id}"): "record.read",
    ("GET", "/v1/records/{record_id}/content"): "record.download",
    ("POST", "/v1/grants"): "grant.create",
    ("PATCH", "/v1/records/{record_id}/lab-results"): "lab.correct",
    ("GET", "/v1/records/{record_id}/lab-results/history"): "lab.read",
    ("POST", "/v1/records/{record_id}/lab-results/extraction"): "record.update",
    ("GET", "/v1/patients/me/lab-trends"): "lab.read",
    ("GET", "/v1/records/{record_id}/fhir"): "record.read",
}
# Patient routes that never wait for consent: knowing, withdrawing and leaving are always possible (PIPL 15, 45, 47).
CONSENT_EXEMPT: frozenset[tuple[str, str]] = frozenset({
    ("POST", "/v1/auth/logout"), ("GET", "/v1/patients/me"), ("DELETE", "/v1/patients/me"),
    ("GET", "/v1/patients/me/access-log"), ("GET", "/v1/patients/me/consents"),
    ("POST", "/v1/patients/me/consents"), ("GET", "/v1/grants"), ("GET", "/v1/grants/{grant_id}/receipt"),
    ("DELETE", "/v1/grants/{grant_id}"),
    # issue 16: the copy of one's own data (PIPL 45) is a right, not a processing the consents gate
    ("POST", "/v1/exports"), ("GET", "/v1/exports/{package_id}"), ("GET", "/v1/exports/{package_id}/download"),
})


async def get_vault(request: Request) -> Vault:
    return request.app.state.vault


def _context(request: Request) -> RequestContext:
    client = request.client.host if request.client else None
    agent = request.headers.get("user-agent")
    return RequestContext(request_id=getattr(request.state, "request_id", None), client_addr=client,
                          user_agent=agent[:256] if agent else None)


async def get_ctx(request: Request) -> RequestContext:
    return _context(request)


def _token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated()
    return value.strip()


# The bearer scheme as OpenAPI declares it (`/docs` can authorize, fuzzers run authenticated). `auto_error=False`: the
# header is read and refused by `_token`, so a missing or malformed credential is our own 401 problem, not FastAPI's.
bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearer",
                           description="An access token from POST /v1/auth/login (`Authorization: Bearer ...`).")
# The same requirement for the routes that declare no dependency (the hot reads), through `openapi_extra`.
BEARER_REQUIRED: dict[str, list[dict[str, list[str]]]] = {"security": [{"bearer": []}]}


async def bearer_token(request: Request,
                       _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]) -> str:
    return _token(request)


def processing_action(request: Request) -> str | None:
    """The audited action this route's processing stands for, or None (not a processing route)."""
    route = request.scope.get("route")
    method = "GET" if request.method == "HEAD" else request.method
    return PROCESSING.get((method, getattr(route, "path", "")))


def _resolve(session, vault: Vault, token: str, action: str | None, ctx: RequestContext) -> Identity:
    identity = tokens.resolve(session, token=token, now=vault.clock(),
                              idle_timeout_seconds=vault.settings.idle_timeout_seconds)
    if action is not None:
        privacy.require_processing_consent(session, vault, identity=identity, ctx=ctx, action=action)
    return identity


VaultDep = Annotated[Vault, Depends(get_vault)]
Ctx = Annotated[RequestContext, Depends(get_ctx)]
BearerToken = Annotated[str, Depends(bearer_token)]


def current_identity(request: Request, token: BearerToken, vault: VaultDep, ctx: Ctx) -> Identity:
    """The caller, resolved and consent-checked in a session of its own (see the module docstring)."""
    with vault.session() as session:
        return _resolve(session, vault, token, processing_action(request), ctx)


CurrentIdentity = Annotated[Identity, Depends(current_identity)]


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """What a hot read takes from its request: gathered by one dependency (FastAPI spends ~40 µs on each one), or by
    `record_path` for the routes that declare no dependency at all."""

    vault: Vault
    lane: DatabaseLane
    token: str
    ctx: RequestContext
    action: str | None


def _caller(request: Request) -> Caller:
    return Caller(vault=request.app.state.vault, lane=request.app.state.db_lane, token=_token(request),
                  ctx=_context(request), action=processing_action(request))


async def caller(request: Request) -> Caller:
    return _caller(request)


CallerDep = Annotated[Caller, Depends(caller)]


def record_path(request: Request) -> tuple[Caller, str]:
    """The caller and the `{record_id}` of a route that declares neither, in FastAPI's order and with its errors: a
    missing or malformed credential (401) first, then an id that is not a UUID (422)."""
    who = _caller(request)
    try:
        return who, str(_UUID.validate_python(request.path_params.get("record_id")))
    except pydantic.ValidationError as exc:  # the errors FastAPI itself gives for a `record_id: uuid.UUID` parameter
        raise RequestValidationError([{**error, "loc": ("path", "record_id")} for error in exc.errors()]) from None


_UUID = pydantic.TypeAdapter(uuid.UUID)


def _in_one_session(caller: Caller, work):
    with caller.lane.session() as session:
        return work(session, _resolve(session, caller.vault, caller.token, caller.action, caller.ctx))


async def as_caller(caller: Caller, work):
    """Resolve the token and run `work(session, identity)` in one session, as one unit of the database lane.

    The hot read endpoints use this instead of `current_identity` so that identity, consent check (PIPL-1) and the
    route's work share one session and, on SQLite, one batch of the fast path (vault/db/fastpath), not two trips."""
    return await caller.lane.run(_in_one_session, caller, work)
