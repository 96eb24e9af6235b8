"""The browser console, served by the vault itself at `/`: server-rendered pages (Jinja2) with vendored htmx.

Owns mounting the console's pages and its static files on the app (`mount`). The pages call the same vault services
as the JSON API (api/routers); nothing here is a second path to data. See pages.py (public pages, shared helpers),
patient_records.py, patient_sharing.py and patient_export.py (the patient's pages), staff.py (doctors, escorts,
compliance staff), admin.py (the administrators' pages), session.py (cookie session, CSRF, headers), render.py,
i18n.py, charts.py, qr.py; templates/ and static/ (no inline script or style).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from api.console import admin, patient_export, patient_records, patient_sharing, staff
from api.console.pages import router
from api.console.render import STATIC


class ConsoleRoutes(BaseRoute):
    """The console's pages as one entry of the app's route table, tried first: a path whose first segment is one of
    the console's (`/records/…`, `/login`, `/`) goes straight to the console's router; any other (`/v1/…`, `/healthz`,
    `/docs`, `/static/…`) costs one set lookup and goes on to the API's routes. Without it every console request was
    matched against every API route first (~0.6 ms of routing per page on this FastAPI, measured)."""

    def __init__(self, routes: list[BaseRoute]) -> None:
        self.router = APIRouter(include_in_schema=False)
        self.router.routes.extend(routes)
        self.segments = frozenset(getattr(r, "path", "/").split("/", 2)[1] for r in routes)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["path"].split("/", 2)[1] in self.segments:
            return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.router.app(scope, receive, send)


def routes() -> list[BaseRoute]:
    """Every console page (the role × endpoint matrix test reads this list)."""
    return [*router.routes, *patient_records.router.routes, *patient_sharing.router.routes,
            *patient_export.router.routes, *staff.router.routes, *admin.router.routes]


def mount(app: FastAPI) -> None:
    app.router.routes.insert(0, ConsoleRoutes(routes()))
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="console-static")
