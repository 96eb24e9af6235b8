"""The FastAPI application factory.

Owns assembling routers, middleware and error handlers around one opened Vault. It holds no business logic.
"""

from __future__ import annotations

import contextlib

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI

from api import problems
from api.deps import processing_consent
from api.middleware import EdgeMiddleware
from api.routers import accounts, audit, auth, health, keys, labs, patients, privacy, records, sharing
from vault import privacy as privacy_notice
from vault.runtime import Vault


def _limit_sqlite_threads(vault: Vault):
    """SQLite admits one writer, and every audited request writes: more than a few DB threads only queue in SQLite's
    busy handler and fight over the GIL (measured: same req/s, higher CPU and p99). PostgreSQL keeps the default."""

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if vault.settings.is_sqlite:
            anyio.to_thread.current_default_thread_limiter().total_tokens = SQLITE_THREADS
        yield

    return lifespan


SQLITE_THREADS = 4


def create_app(vault: Vault) -> FastAPI:
    privacy_notice.current_notice(vault)  # a missing or malformed privacy notice stops start-up, not a registration
    app = FastAPI(
        # PIPL-1: every route names the processing it does, for the consent check at identity resolution.
        dependencies=[Depends(processing_consent)],
        lifespan=_limit_sqlite_threads(vault),
        title="Health Vault",
        version="0.1.0",
        description="Privacy-first health record vault. Errors are RFC 9457 problem+json.",
    )
    app.state.vault = vault
    problems.install(app)
    for router in (health.router, auth.router, patients.router, records.router, audit.router, sharing.router, labs.router,
                   privacy.router, keys.router, accounts.router):
        app.include_router(router)
    app.add_middleware(EdgeMiddleware)
    return app
