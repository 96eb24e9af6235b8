"""Operations endpoints and request metrics (issue 17 item 5): GET /metrics, GET /readyz, the metrics middleware.

Owns what an operator's monitoring sees. /metrics (Prometheus text) answers only clients in `admin_networks` (only
loopback when that setting is empty) and carries no identifier in any label: routes are templates, problem types are
slugs (vault/metrics.py). /readyz says whether the database, the blob store and the key provider answer, component by
component, with no error text; a load balancer takes a process out of rotation on 503.
"""

from __future__ import annotations

import ipaddress
import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import MEDIA_TYPE, problem
from vault import metrics

router = APIRouter()
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_MAX_PROBLEM_BODY = 8192


def _allowed(networks: str | None, host: str | None) -> bool:
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if not networks:
        return address.is_loopback
    return any(address in ipaddress.ip_network(n.strip(), strict=False) for n in networks.split(",") if n.strip())


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics(request: Request) -> Response:
    vault = request.app.state.vault
    if not _allowed(vault.settings.admin_networks, request.client.host if request.client else None):
        return problem(request, status=403, slug="forbidden", title="Forbidden",
                       detail="Metrics are served to the administrative networks only")
    return Response(metrics.scrape(vault), media_type=metrics.CONTENT_TYPE)


def _probe(check) -> str:
    try:
        check()
    except Exception:  # noqa: BLE001 - any failure means "not ready"; the reason goes nowhere a client sees
        return "unavailable"
    return "ok"


@router.get("/readyz", tags=["health"])
def readyz(request: Request) -> JSONResponse:
    vault = request.app.state.vault

    def database() -> None:
        with vault.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def keys() -> None:
        vault.keys.current_root_version()
        vault.keystore.is_destroyed("00000000-0000-0000-0000-000000000000")

    checks = {"database": _probe(database), "blobs": _probe(vault.blobs.check), "keys": _probe(keys)}
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "unavailable", "checks": checks},
                        status_code=200 if ready else 503)


class MetricsMiddleware:
    """Counts every request by method, route template and status, its latency, and error responses by problem type."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        problem_body: list[bytearray] = []  # set when the response is a problem+json

        async def observe(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = dict(message.get("headers") or ())
                if headers.get(b"content-type", b"").startswith(MEDIA_TYPE.encode()):
                    problem_body.append(bytearray())
            elif message["type"] == "http.response.body" and problem_body:
                if len(problem_body[0]) < _MAX_PROBLEM_BODY:
                    problem_body[0] += message.get("body", b"")[:_MAX_PROBLEM_BODY]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            method = scope.get("method") if scope.get("method") in METHODS else "OTHER"
            metrics.REQUESTS.labels(method, route, str(status[0])).inc()
            metrics.LATENCY.labels(route).observe(time.perf_counter() - started)
            if problem_body:
                metrics.PROBLEMS.labels(_slug(bytes(problem_body[0]))).inc()


def _slug(body: bytes) -> str:
    try:
        kind = json.loads(body).get("type", "")
    except (ValueError, AttributeError):
        return "unknown"
    slug = str(kind).rsplit(":", 1)[-1]
    return slug if slug.replace("-", "").isalnum() and len(slug) <= 48 else "unknown"
