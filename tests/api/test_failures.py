"""Failure paths: audit append fails, audit rows cannot change, a crash mid-upload leaves nothing behind."""

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from audit.models import AuditEvent
from tests.helpers import blobs, login, png_bytes, register, upload
from vault.db.models import Record


def _fail_inserts(vault, backend, table: str, name: str, message: str) -> None:
    """A real database failure on one table's insert path (no mock): a trigger that refuses new rows."""
    with vault.engine.begin() as conn:
        if backend == "sqlite":
            conn.exec_driver_sql(f"CREATE TRIGGER {name} BEFORE INSERT ON {table} "
                                 f"BEGIN SELECT RAISE(ABORT, '{message}'); END")
        else:
            conn.exec_driver_sql(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                                 f"RAISE EXCEPTION '{message}'; END $$")
            conn.exec_driver_sql(f"CREATE TRIGGER {name} BEFORE INSERT ON {table} "
                                 f"FOR EACH ROW EXECUTE FUNCTION {name}()")


def _install_failing_audit(vault, backend) -> None:
    _fail_inserts(vault, backend, "audit_events", "audit_down", "audit storage unavailable")


def test_when_the_audit_append_fails_no_data_is_returned(client, vault, backend):
    register(client, username="ivan", real_name="伊万")
    headers = login(client, "ivan")
    data = png_bytes(b"secret-bytes")
    record_id = upload(client, headers, data, title="secret-title").json()["record_id"]
    _install_failing_audit(vault, backend)
    for path in (f"/v1/records/{record_id}", f"/v1/records/{record_id}/content", "/v1/records", "/v1/patients/me"):
        response = client.get(path, headers=headers)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["type"].endswith(":audit-unavailable")
        assert b"secret" not in response.content and "伊万" not in response.text
    # A write whose audit fails leaves no record and no blob.
    before = len(blobs.stored(vault.blobs))
    assert upload(client, headers, png_bytes(b"new")).status_code == 503
    assert len(blobs.stored(vault.blobs)) == before
    with vault.session() as session:
        assert session.scalar(select(func.count()).select_from(Record)) == 1


@pytest.mark.parametrize("statement", ["UPDATE audit_events SET outcome = 'allow'", "DELETE FROM audit_events",
                                       "UPDATE audit_events SET outcome = 'allow' WHERE 1 = 0",
                                       "TRUNCATE audit_events"])
def test_the_database_refuses_to_change_audit_rows(client, vault, backend, statement):
    if backend == "sqlite" and ("TRUNCATE" in statement or "1 = 0" in statement):
        pytest.skip("SQLite has no TRUNCATE and no statement-level triggers; DELETE of rows covers it")
    register(client, username="judy")
    with vault.session() as session:
        count = session.scalar(select(func.count()).select_from(AuditEvent))
    assert count >= 1
    with pytest.raises(DBAPIError, match="append-only"):
        with vault.engine.begin() as conn:
            conn.exec_driver_sql(statement)
    with vault.session() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == count


def test_a_failed_commit_after_the_blob_is_written_leaves_no_orphan(client, vault, backend):
    register(client, username="kim")
    headers = login(client, "kim")
    _fail_inserts(vault, backend, "records", "records_down", "disk full")
    response = upload(client, headers, png_bytes(b"x") + b"\0" * 500_000)
    assert response.status_code == 500
    assert response.json()["type"].endswith(":internal")
    assert blobs.stored(vault.blobs) + blobs.leftovers(vault.blobs) == []
    with vault.session() as session:
        assert session.scalar(select(func.count()).select_from(Record)) == 0


def test_a_crash_mid_upload_is_cleaned_at_next_start(settings, vault):
    if settings.blob_url:
        pytest.skip("the local store's temp files; S3: tests/vault/blobs/test_s3.py kills an uploading process")
    from tests.conftest import PASSPHRASE
    from vault.runtime import open_vault

    temp = vault.blobs.create_temp()
    temp.write(b"ciphertext of an upload that never finished")
    # The process dies here: no commit, no discard.
    leftovers = list(vault.blobs.tmp_dir.iterdir())
    assert len(leftovers) == 1
    reopened = open_vault(settings, PASSPHRASE)
    try:
        assert list(reopened.blobs.tmp_dir.iterdir()) == []
    finally:
        reopened.close()


def test_client_disconnect_mid_upload_leaves_nothing(vault):
    """An ASGI-level disconnect in the middle of the body (what a dropped connection looks like to the app)."""
    import asyncio

    from fastapi.testclient import TestClient

    from api.app import create_app

    app = create_app(vault)
    with TestClient(app) as client:
        register(client, username="leo")
        token = login(client, "leo")["Authorization"].encode()
    head = (b"--bb\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\nother\r\n"
            b"--bb\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n" + png_bytes())
    messages = [{"type": "http.request", "body": head, "more_body": True},
                {"type": "http.request", "body": b"\0" * 300_000, "more_body": True},
                {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/records", "raw_path": b"/v1/records", "query_string": b"", "root_path": "",
             "headers": [(b"authorization", token), (b"content-type", b"multipart/form-data; boundary=bb")],
             "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 80), "state": {}}
    asyncio.run(app(scope, receive, send))
    assert blobs.stored(vault.blobs) + blobs.leftovers(vault.blobs) == []
    with vault.session() as session:
        assert session.scalar(select(func.count()).select_from(Record)) == 0
