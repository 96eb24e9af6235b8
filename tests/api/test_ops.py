"""GET /readyz and GET /metrics (issue 17 item 5): readiness per component; Prometheus text from the admin networks
only, with route templates and problem slugs as labels, never an identifier."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.helpers import login, png_bytes, register, upload

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_readyz_names_the_component_that_does_not_answer(client, vault):
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "blobs": "ok", "keys": "ok"}}
    if vault.settings.blob_url:
        pytest.skip("breaking the store below is the local directory's")
    root = vault.blobs.root
    away = root.with_name("blobs-away")
    root.rename(away)  # the blob volume is gone (unmounted, lost)
    try:
        broken = client.get("/readyz")
    finally:
        away.rename(root)
    assert broken.status_code == 503
    assert broken.json() == {"status": "unavailable",
                             "checks": {"database": "ok", "blobs": "unavailable", "keys": "ok"}}


def test_metrics_are_for_the_admin_networks_only_and_carry_no_identifier(app, vault):
    with TestClient(app, client=("127.0.0.1", 40000)) as local:
        register(local, username="metric-pat", real_name="赵六")
        headers = login(local, "metric-pat")
        record_id = upload(local, headers, png_bytes(b"m"), category="other").json()["record_id"]
        assert local.get(f"/v1/records/{record_id}", headers=headers).status_code == 200
        assert local.get("/v1/records/00000000-0000-0000-0000-000000000000", headers=headers).status_code == 404
        scraped = local.get("/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        body = scraped.text
    for expected in ('route="/v1/records/{record_id}"', 'healthvault_problems_total{type="not-found"}',
                     "healthvault_http_request_duration_seconds_bucket", "healthvault_ocr_queue_depth",
                     "healthvault_audit_checkpoint_lag_events", 'healthvault_key_cache_lookups_total{result="hit"}'):
        assert expected in body, expected
    for secret in (record_id, "metric-pat", "赵六", headers["Authorization"].split()[1]):
        assert secret not in body
    with TestClient(app) as remote:  # "testclient": not an address of the admin networks
        refused = remote.get("/metrics")
    assert refused.status_code == 403 and refused.json()["type"].endswith(":forbidden")
    object.__setattr__(vault.settings, "admin_networks", "10.0.0.0/8")
    try:
        with TestClient(app, client=("127.0.0.1", 40000)) as local:
            assert local.get("/metrics").status_code == 403
        with TestClient(app, client=("10.1.2.3", 40000)) as admin:
            assert admin.get("/metrics").status_code == 200
    finally:
        object.__setattr__(vault.settings, "admin_networks", None)
