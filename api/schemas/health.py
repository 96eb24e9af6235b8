"""The health check's answer."""

from __future__ import annotations

from pydantic import BaseModel


class Health(BaseModel):
    status: str
