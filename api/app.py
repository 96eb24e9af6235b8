"""The FastAPI application factory.

Owns assembling routers, middleware and error handlers around one opened Vault. It holds no business logic.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from api import console, ops, problems
from api.middleware import EdgeMiddleware
from api.routers import accounts, audit, auth, health, keys, labs, outputs, patients, privacy, records, sharing
from vault.db.fastpath import DatabaseLane
from vault.patients import privacy as privacy_notice

if TYPE_CHECKING:
    from vault.runtime import Vault


def _lifespan(vault: Vault, lane: DatabaseLane) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """SQLite admits one writer, and every audited request writes: more than a few DB threads only queue in SQLite's
    busy handler and fight over the GIL (measured: same req/s, higher CPU and p99). PostgreSQL keeps the default.
    The hot reads go through the fast path (vault/db/fastpath: batches on this event loop), closed when the app
    stops."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if vault.settings.is_sqlite:
            anyio.to_thread.current_default_thread_limiter().total_tokens = SQLITE_THREADS
        try:
            yield
        finally:
            lane.close()

    return lifespan


SQLITE_THREADS = 4
NO_TELEMETRY: TelemetryConfig = {"tracer_provider": None, "meter_provider": None, "logger_provider": None,
                                 "tracing": False, "metrics": False, "logs": False, "operation_spans": False,
                                 "auto_configure": False, "exclude": None}


def create_app(vault: Vault) -> FastAPI:
    privacy_notice.current_notice(vault)  # a missing or malformed privacy notice stops start-up, not a registration
    lane = DatabaseLane(vault, single_thread=vault.settings.is_sqlite)
    app = FastAPI(
        lifespan=_lifespan(vault, lane),
        title="Health Vault",
        version="0.1.0",
        description="Privacy-first health record vault. Errors are RFC 9457 problem+json.",
        # FastAPI's own OpenTelemetry (spans, metrics, and logs of validation failures with their inputs) is off
        # whatever the process's OpenTelemetry setup or $FASTAPI_OTEL_AUTO_CONFIGURE says: request data must not
        # leave by a route nobody reviewed. Operations metrics are /metrics (api/ops.py), PHI-free by construction.
        telemetry=NO_TELEMETRY,
    )
    app.state.vault = vault
    app.state.db_lane = lane
    problems.install(app)
    # Routers are tried in this order on every request: the hot record reads come right after the health check.
    for router in (health.router, records.router, auth.router, patients.router, audit.router, sharing.router,
                   labs.router, privacy.router, keys.router, accounts.router, outputs.router, ops.router):
        app.include_router(router)
    app.add_middleware(ops.MetricsMiddleware)  # issue 17: /metrics (inside the edge: its request ids and refusals)
    console.mount(app)  # the browser console at / (api/console): its own paths only, the same services
    app.add_middleware(EdgeMiddleware)
    return app
