"""IP-3: admin and audit operations only from configured networks. IP-4: bursts of denials and break-glass alert."""

from __future__ import annotations

import http.server
import json
import threading
import time
import typing

from sqlalchemy import select

from audit.models import AuditEvent
from tests.helpers import login, register, staff


def _client(app, address: str):
    from fastapi.testclient import TestClient

    return TestClient(app, raise_server_exceptions=False, client=(address, 40000))


def test_audit_api_only_from_admin_networks(vault, app):
    object.__setattr__(vault.settings, "admin_networks", "10.20.0.0/16, 127.0.0.1/32")
    with _client(app, "10.20.3.4") as inside, _client(app, "192.168.9.9") as outside:
        headers = staff(inside, vault, "auditor", "net-auditor")
        headers.pop("_secret")
        assert inside.get("/v1/audit/events", headers=headers).status_code == 200
        refused = outside.get("/v1/audit/events", headers=headers)
        assert refused.status_code == 403
    with vault.session() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.reason == "network")).one()
    assert (event.action, event.outcome, event.client_addr) == ("audit.read", "deny", "192.168.9.9")


class _Hook(http.server.BaseHTTPRequestHandler):
    received: typing.ClassVar[list] = []

    def do_POST(self):
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_burst_of_denials_raises_one_alert_and_one_webhook_call(client, vault):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received = []
    object.__setattr__(vault.settings, "alert_webhook", f"http://127.0.0.1:{server.server_port}/hook")
    try:
        register(client, username="prober")
        headers = login(client, "prober")
        for n in range(25):
            client.get(f"/v1/records/00000000-0000-4000-8000-{n:012d}", headers=headers)
        for _ in range(50):
            if _Hook.received:
                break
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        server.shutdown()
    with vault.session() as session:
        alerts = session.scalars(select(AuditEvent).where(AuditEvent.action == "alert.raised")).all()
    assert len(alerts) == 1 and alerts[0].reason == "denial-burst"
    assert len(_Hook.received) == 1
    payload = _Hook.received[0]
    assert payload["kind"] == "denial-burst" and payload["count"] == vault.settings.alert_denials_per_minute
    assert "prober" not in json.dumps(payload)
