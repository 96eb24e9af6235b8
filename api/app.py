"""The FastAPI application factory.

Owns assembling routers, middleware and error handlers around one opened Vault. It holds no business logic.
"""

from __future__ import annotations

from fastapi import FastAPI

from api import problems
from api.middleware import EdgeMiddleware
from api.routers import audit, auth, health, patients, records, sharing
from vault.runtime import Vault


def create_app(vault: Vault) -> FastAPI:
    app = FastAPI(
        title="Health Vault",
        version="0.1.0",
        description="Privacy-first health record vault. Errors are RFC 9457 problem+json.",
    )
    app.state.vault = vault
    problems.install(app)
    for router in (health.router, auth.router, patients.router, records.router, audit.router, sharing.router):
        app.include_router(router)
    app.add_middleware(EdgeMiddleware)
    return app
