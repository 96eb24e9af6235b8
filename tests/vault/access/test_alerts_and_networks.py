"""IP-3: admin and audit operations only from configured networks. IP-4: bursts of denials and break-glass alert."""

from __future__ import annotations

import json
import time

from sqlalchemy import select

from audit.models import AuditEvent
from tests.helpers import login, register, staff
from tests.helpers.webhook import WebhookReceiver


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


def test_a_burst_of_denials_raises_one_alert_and_one_webhook_call(client, vault):
    receiver = WebhookReceiver()
    object.__setattr__(vault.settings, "alert_webhook", receiver.url)
    try:
        register(client, username="prober")
        headers = login(client, "prober")
        for n in range(25):
            client.get(f"/v1/records/00000000-0000-4000-8000-{n:012d}", headers=headers)
        receiver.wait(1, timeout=2.5)
        time.sleep(0.2)  # a second call, if the alert were raised twice, would have arrived by now
    finally:
        receiver.close()
    with vault.session() as session:
        alerts = session.scalars(select(AuditEvent).where(AuditEvent.action == "alert.raised")).all()
    assert len(alerts) == 1 and alerts[0].reason == "denial-burst"
    assert len(receiver.received) == 1
    payload = receiver.received[0]
    assert payload["kind"] == "denial-burst" and payload["count"] == vault.settings.alert_denials_per_minute
    assert "prober" not in json.dumps(payload)
