"""On PostgreSQL the service can run as `healthvault_app`, which may read and append the trail but never change it."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError

from tests.conftest import PASSPHRASE
from tests.helpers import login, png_bytes, register, upload


@pytest.mark.postgres
def test_service_runs_as_the_app_role_which_cannot_rewrite_history(pg_app_role_settings):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from vault.auditing import trail as audit_trail
    from vault.runtime import open_vault

    # The key store keeps its own credential (here the owner's): the app role gets nothing in the key schema.
    _owner_settings, app_settings = pg_app_role_settings
    vault = open_vault(app_settings, PASSPHRASE)
    try:
        with TestClient(create_app(vault), raise_server_exceptions=False) as client:
            register(client, username="rolepatient")
            headers = login(client, "rolepatient")
            record_id = upload(client, headers, png_bytes(b"r")).json()["record_id"]
            assert client.get(f"/v1/records/{record_id}/content", headers=headers).status_code == 200
        assert audit_trail.checkpoint_now(vault) is not None
        for statement in ("UPDATE audit_events SET outcome = 'deny'", "DELETE FROM audit_events",
                          "TRUNCATE audit_events", "DELETE FROM audit_leaves",
                          "UPDATE audit_checkpoints SET kind = 'x'",
                          "INSERT INTO audit_archive_permits (below_leaf, archive_sha256, created_at) "
                          "VALUES (1000000, 'x', now())"):
            with pytest.raises(DBAPIError, match=r"permission denied|append-only"):
                with vault.engine.begin() as conn:
                    conn.exec_driver_sql(statement)
    finally:
        vault.close()
