"""The browser console, served by the vault itself at `/`: server-rendered pages (Jinja2) with vendored htmx.

Owns mounting the console's pages and its static files on the app (`mount`). The pages call the same vault services
as the JSON API (api/routers); nothing here is a second path to data. See pages.py (routes), admin.py (the
administrators' pages), session.py (cookie session, CSRF, headers), render.py, i18n.py, charts.py, qr.py; templates/
and static/ (no inline script or style).
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from api.console.admin import router as admin_router
from api.console.pages import router
from api.console.render import STATIC


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.include_router(admin_router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="console-static")
