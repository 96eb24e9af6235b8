"""FastAPI dependencies: the running vault, the request context and the caller's identity.

Owns reading credentials from the Authorization header only (never cookies or the URL). Dependencies that touch no
I/O are `async def` on purpose: FastAPI runs every plain `def` dependency in the thread pool, one hop each. Identity resolution hits the
token table on every request so that a revoked or expired token fails on the very next request in every worker.
"""

from __future__ import annotations

from fastapi import Depends, Request

from vault import tokens
from vault.errors import Unauthenticated
from vault.identity import Identity, RequestContext
from vault.runtime import Vault


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


def current_identity(token: str = Depends(bearer_token), vault: Vault = Depends(get_vault)) -> Identity:
    with vault.session() as session:
        return tokens.resolve(session, token=token, now=vault.clock(),
                              idle_timeout_seconds=vault.settings.idle_timeout_seconds)


def as_caller(vault: Vault, token: str, work):
    """Resolve the token and run `work(session, identity)` in one session, in one worker-thread hop.

    The hot read endpoints use this instead of `current_identity` so a request costs one thread-pool hop and one
    connection checkout, not two."""
    with vault.session() as session:
        identity = tokens.resolve(session, token=token, now=vault.clock(),
                                  idle_timeout_seconds=vault.settings.idle_timeout_seconds)
        return work(session, identity)
