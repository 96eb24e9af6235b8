"""On PostgreSQL the service can run as `healthvault_app`, which may read and append the trail but never change it."""

from __future__ import annotations

import dataclasses
import secrets

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from tests.conftest import CHEAP_KDF, PASSPHRASE, PG_URL, make_settings
from tests.helpers import login, png_bytes, register, upload


@pytest.mark.postgres
def test_service_runs_as_the_app_role_which_cannot_rewrite_history(tmp_path, request, monkeypatch):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from vault import audit_trail
    from vault.runtime import init_data_dir, open_vault

    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    owner_settings = make_settings(tmp_path, "postgres", request)
    init_data_dir(owner_settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    open_vault(owner_settings, PASSPHRASE).close()  # the owner migrates

    login_role = f"hv_svc_{secrets.token_hex(4)}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {login_role} LOGIN IN ROLE healthvault_app"))
    data_schema = owner_settings.database_url.split("search_path%3D", 1)[1]
    app_url = PG_URL.replace("postgres@", f"{login_role}@") + f"?options=-csearch_path%3D{data_schema}"
    # The key store keeps its own credential (here the owner's): the app role gets nothing in the key schema.
    app_settings = dataclasses.replace(owner_settings, database_url=app_url)
    try:
        vault = open_vault(app_settings, PASSPHRASE)
        try:
            with TestClient(create_app(vault), raise_server_exceptions=False) as client:
                register(client, username="rolepatient")
                headers = login(client, "rolepatient")
                record_id = upload(client, headers, png_bytes(b"r")).json()["record_id"]
                assert client.get(f"/v1/records/{record_id}/content", headers=headers).status_code == 200
            assert audit_trail.checkpoint_now(vault) is not None
            for statement in ("UPDATE audit_events SET outcome = 'deny'", "DELETE FROM audit_events",
                              "TRUNCATE audit_events", "DELETE FROM audit_leaves", "UPDATE audit_checkpoints SET kind = 'x'",
                              "INSERT INTO audit_archive_permits (below_leaf, archive_sha256, created_at) "
                              "VALUES (1000000, 'x', now())"):
                with pytest.raises(DBAPIError, match="permission denied|append-only"):
                    with vault.engine.begin() as conn:
                        conn.exec_driver_sql(statement)
        finally:
            vault.close()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP OWNED BY {login_role}"))
            conn.execute(text(f"DROP ROLE {login_role}"))
        admin.dispose()
