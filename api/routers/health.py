"""The liveness check: no database, no authentication."""

from __future__ import annotations

from fastapi import APIRouter

from api.schemas.health import Health

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["health"])
async def healthz() -> Health:
    return Health(status="ok")
