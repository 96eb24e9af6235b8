"""AUD-7: committed events reach a central collector, PHI-free. LOG-1: log retention has a six-month floor."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CHEAP_KDF, PASSPHRASE, make_settings
from tests.helpers import SinkListener, login, make_id_number, png_bytes, register, upload
from tests.helpers.scan import find_in_bytes


@pytest.mark.parametrize("kind", ["udp", "tcp"])
def test_every_committed_event_reaches_the_collector_without_phi(tmp_path, monkeypatch, kind):
    from fastapi.testclient import TestClient
    from sqlalchemy import select

    from api.app import create_app
    from audit.models import AuditEvent
    from vault.runtime import init_data_dir, open_vault

    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    listener = SinkListener(kind)
    scheme = "syslog+udp" if kind == "udp" else "tcp"
    settings = make_settings(tmp_path, "sqlite", audit_sink=f"{scheme}://127.0.0.1:{listener.port}")
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    vault = open_vault(settings, PASSPHRASE)
    name, id_number, phone = "司马测试者", make_id_number(birth="19660606"), "13566667777"
    with TestClient(create_app(vault), raise_server_exceptions=False) as client:
        register(client, username="sinker", real_name=name, id_number=id_number, phone=phone)
        headers = login(client, "sinker")
        record_id = upload(client, headers, png_bytes(b"sink"), title="随访记录").json()["record_id"]
        client.get(f"/v1/records/{record_id}", headers=headers)
        client.get("/v1/records", headers=headers)
    import time

    time.sleep(0.5)
    received = listener.events()
    with vault.session() as session:
        stored = [e.hash for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    vault.close()
    assert [e["hash"] for e in received] == stored
    raw = json.dumps(received, ensure_ascii=False).encode()
    assert find_in_bytes(raw, [name, id_number, phone, "随访记录"]) == []


def test_log_retention_below_six_months_is_refused(tmp_path):
    with pytest.raises(ValueError, match="184"):
        make_settings(tmp_path, "sqlite", log_retention_days=183)
    assert make_settings(tmp_path, "sqlite", log_retention_days=184).log_retention_days == 184


def test_serve_refuses_short_log_retention(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHVAULT_")}
    env.update(HEALTHVAULT_DATA_DIR=str(tmp_path / "var"), HEALTHVAULT_PASSPHRASE="x" * 20,
               HEALTHVAULT_LOG_RETENTION_DAYS="30")
    result = subprocess.run([sys.executable, "-m", "vault.cli", "serve"], env=env, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode != 0 and "184" in result.stderr


def test_no_setting_turns_auditing_off():
    import dataclasses

    from vault.settings import Settings

    names = {f.name for f in dataclasses.fields(Settings)}
    assert not [n for n in names if "audit" in n and any(w in n for w in ("enable", "disable", "off", "skip"))]
