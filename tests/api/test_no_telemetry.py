"""FastAPI's native OpenTelemetry stays off in the vault's app even when the process has a tracer provider (as under
`opentelemetry-instrument`) and $FASTAPI_OTEL_AUTO_CONFIGURE is set: spans and logs of requests (validation failures
carry their inputs) must not leave by a route nobody reviewed (api/app.py NO_TELEMETRY)."""

from __future__ import annotations

import opentelemetry.trace as otel_trace
from fastapi.testclient import TestClient

from api.app import create_app


class RecordingTracerProvider(otel_trace.TracerProvider):
    """A configured provider (neither a deferred default nor a no-op one) that records who asks it for a tracer."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get_tracer(self, instrumenting_module_name, *args, **kwargs):
        self.asked.append(instrumenting_module_name)
        return otel_trace.NoOpTracer()


def test_no_span_is_asked_for_with_a_tracer_provider_configured(vault, monkeypatch):
    provider = RecordingTracerProvider()
    monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER", provider)
    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "true")
    with TestClient(create_app(vault)) as client:
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/patients/register", json={"id_number": "11010519491231002X"}).status_code == 422
    assert provider.asked == []
