"""FastAPI dependencies: the running vault, the request context and the caller's identity.

Owns reading credentials from the Authorization header only (never cookies or the URL). Dependencies that touch no
I/O are `async def` on purpose: FastAPI runs every plain `def` dependency in the thread pool, one hop each. Identity resolution hits the
token table on every request so that a revoked or expired token fails on the very next request in every worker.

Separate consent (PIPL-1): `processing_consent` runs on every route (installed app-wide by api/app.py) and names
the processing the route does for a patient (`PROCESSING`, keyed by method and route template), or nothing. The
check itself happens where the caller is resolved — `current_identity` and `as_caller` — in the same session and
thread-pool hop: a patient without both consents on the current privacy notice gets 403 `consent-required`
(audited as a denial of that action) before the route does anything. Routes a patient must always reach (their
profile, access log, consents, withdrawing grants, erasure) are in `CONSENT_EXEMPT`; a test keeps the two lists
covering every patient route.
"""

from __future__ import annotations

import contextvars

from fastapi import Depends, Request

from vault import privacy, tokens
from vault.errors import Unauthenticated
from vault.identity import Identity, RequestContext
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
}
# Patient routes that never wait for consent: knowing, withdrawing and leaving are always possible (PIPL 15, 45, 47).
CONSENT_EXEMPT: frozenset[tuple[str, str]] = frozenset({
    ("POST", "/v1/auth/logout"), ("GET", "/v1/patients/me"), ("DELETE", "/v1/patients/me"),
    ("GET", "/v1/patients/me/access-log"), ("GET", "/v1/patients/me/consents"),
    ("POST", "/v1/patients/me/consents"), ("GET", "/v1/grants"), ("GET", "/v1/grants/{grant_id}/receipt"),
    ("DELETE", "/v1/grants/{grant_id}"),
})

# Set per request by `processing_consent` (an async dependency: no thread hop); thread-pool calls copy the context.
# Unset means the dependency did not run for this request: the check then fails closed instead of skipping.
_processing: contextvars.ContextVar[tuple[str, RequestContext] | None] = contextvars.ContextVar(
    "healthvault_processing")


async def get_vault(request: Request) -> Vault:
    return request.app.state.vault


async def get_ctx(request: Request) -> RequestContext:
    client = request.client.host if request.client else None
    agent = request.headers.get("user-agent")
    return RequestContext(request_id=getattr(request.state, "request_id", None), client_addr=client,
                          user_agent=agent[:256] if agent else None)


async def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated()
    return value.strip()


async def processing_consent(request: Request, ctx: RequestContext = Depends(get_ctx)) -> None:
    """Name this route's processing (or none) for the consent check done at identity resolution."""
    route = request.scope.get("route")
    method = "GET" if request.method == "HEAD" else request.method
    action = PROCESSING.get((method, getattr(route, "path", "")))
    _processing.set((action, ctx) if action else None)


def _check_consent(session, vault: Vault, identity: Identity) -> None:
    try:
        pending = _processing.get()
    except LookupError:
        raise RuntimeError("processing_consent is not installed on this app (api/app.py)") from None
    if pending is not None:
        action, ctx = pending
        privacy.require_processing_consent(session, vault, identity=identity, ctx=ctx, action=action)


def current_identity(token: str = Depends(bearer_token), vault: Vault = Depends(get_vault)) -> Identity:
    with vault.session() as session:
        identity = tokens.resolve(session, token=token, now=vault.clock(),
                                  idle_timeout_seconds=vault.settings.idle_timeout_seconds)
        _check_consent(session, vault, identity)
        return identity


def as_caller(vault: Vault, token: str, work):
    """Resolve the token and run `work(session, identity)` in one session, in one worker-thread hop.

    The hot read endpoints use this instead of `current_identity` so a request costs one thread-pool hop and one
    connection checkout, not two. The consent check (PIPL-1) runs here too, in the same session."""
    with vault.session() as session:
        identity = tokens.resolve(session, token=token, now=vault.clock(),
                                  idle_timeout_seconds=vault.settings.idle_timeout_seconds)
        _check_consent(session, vault, identity)
        return work(session, identity)
