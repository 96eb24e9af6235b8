"""The backup and restore drill (COMPLIANCE BAK-1, PIPL-6), on SQLite and on PostgreSQL.

backup → wipe → `restore --verify` → every record byte-identical through the API, the audit chain verifies offline
(an export checked with the pinned key), the restore is audited; a backup taken before an erasure brings back nothing
readable of that patient (the KEK is gone from the key store, which no data backup holds). The CLI runs in-process
(click's runner): the same code paths as a shell, without a second interpreter start per verb.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, select, text

from kms.errors import KeyDestroyed
from tests.conftest import CHEAP_KDF, PASSPHRASE, PG_URL, unique
from tests.helpers import login, pdf_bytes, png_bytes, register, upload
from vault.cli import main
from vault.db.models import Record
from vault.identity import Identity, RequestContext
from vault.runtime import init_data_dir, open_vault
from vault.settings import Settings

pytestmark = pytest.mark.timeout(300)
OPERATOR = Identity(account_id="cli:drill", role="operator")


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@contextlib.contextmanager
def _running(settings: Settings) -> Iterator[tuple]:
    from fastapi.testclient import TestClient

    from api.app import create_app

    vault = open_vault(settings, PASSPHRASE)
    try:
        with TestClient(create_app(vault), raise_server_exceptions=False) as client:
            yield vault, client
    finally:
        vault.close()


def _snapshot(client, headers: dict) -> dict:
    """Every record of the caller, as the API shows it: metadata and content bytes."""
    listed = client.get("/v1/records", headers=headers, params={"limit": 100})
    assert listed.status_code == 200, listed.text
    out = {}
    for item in listed.json()["items"]:
        meta = client.get(f"/v1/records/{item['record_id']}", headers=headers)
        content = client.get(f"/v1/records/{item['record_id']}/content", headers=headers)
        assert meta.status_code == 200 and content.status_code == 200, (meta.text, content.status_code)
        out[item["record_id"]] = (meta.json(), content.content)
    return out


@pytest.fixture
def drill_settings(tmp_path, backend, request, monkeypatch) -> Settings:
    from tests.conftest import make_settings

    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    settings = make_settings(tmp_path, backend, request)
    if settings.kms_provider != "local":
        pytest.skip("the drill's CLI runs on the sealed local root key")
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    monkeypatch.setenv("HEALTHVAULT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("HEALTHVAULT_PASSPHRASE", PASSPHRASE.decode())
    if backend == "postgres":
        monkeypatch.setenv("HEALTHVAULT_DATABASE_URL", settings.database_url)
        monkeypatch.setenv("HEALTHVAULT_KEYSTORE_URL", settings.keystore_url)
        monkeypatch.setenv("HEALTHVAULT_KEYSTORE_SCHEMA", settings.keystore_schema or "")
    return settings


def _wipe(settings: Settings, request) -> None:
    """Lose the data: the database and the blob directory (the key store and root key survive, as they would)."""
    if settings.is_sqlite:
        for path in settings.data_dir.glob("vault.db*"):
            path.unlink()
    else:
        data_schema, _keys = request.getfixturevalue("pg_schemas")
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {data_schema} CASCADE"))
            conn.execute(text(f"CREATE SCHEMA {data_schema}"))
        admin.dispose()
    shutil.rmtree(settings.blob_dir)


def test_backup_wipe_restore_is_byte_identical_audited_and_keeps_erasures(drill_settings, tmp_path, request):
    settings = drill_settings
    with _running(settings) as (vault, client):
        kept = register(client, username=unique("keep"), real_name="留存患者")
        gone = register(client, username=unique("gone"), real_name="删除患者")
        heads = {"kept": login(client, kept["username"]), "gone": login(client, gone["username"])}
        for who in ("kept", "gone"):
            for n, (data, kind) in enumerate(((pdf_bytes(f"DRILL-{who}"), "application/pdf"),
                                              (png_bytes(f"DRILL-{who}".encode()), "image/png"))):
                made = upload(client, heads[who], data, category="exam_report", title=f"drill {n}",
                              filename=f"f{n}.bin", content_type=kind)
                assert made.status_code == 201, made.text
        before = _snapshot(client, heads["kept"])
        gone_records = _snapshot(client, heads["gone"])
        assert len(before) == 2 and len(gone_records) == 2
        with vault.session() as session:
            gone_wraps = list(session.scalars(select(Record.wrapped_dek)
                                              .where(Record.patient_id == gone["patient_id"])))

    before_erasure, after_erasure = tmp_path / "b-before-erasure", tmp_path / "b-after-erasure"
    made = _cli("backup", "--out", str(before_erasure))
    assert made.exit_code == 0, made.output
    assert "key store is NOT in it" in made.output
    assert not any("keys" in p.parts for p in before_erasure.rglob("*")), "the key store must never be backed up"
    assert _cli("backup", "--out", str(before_erasure)).exit_code != 0  # never into a non-empty directory

    from vault.patients import erasure

    with _running(settings) as (vault, _client), vault.session() as session:
        erasure.erase_by_operator(session, vault, patient_id=gone["patient_id"], actor=OPERATOR,
                                  ctx=RequestContext(request_id="drill"))
    assert _cli("backup", "--out", str(after_erasure)).exit_code == 0

    # --- the drill: wipe, restore, compare ----------------------------------------------------------------------
    _wipe(settings, request)
    restored = _cli("restore", str(after_erasure), "--verify")
    assert restored.exit_code == 0, restored.output
    assert "audit chain verified" in restored.output
    refused = _cli("restore", str(after_erasure))
    assert refused.exit_code != 0 and "not empty" in refused.output and "--force" in refused.output

    with _running(settings) as (vault, client):
        assert _snapshot(client, login(client, kept["username"])) == before  # byte-identical through the API
        _assert_restore_audited(vault, client, ["allow:started", "error:refused: target directory", "allow:started"])
        vkey = _vkey(vault)
    export = tmp_path / "export-after-restore"
    assert _cli("audit", "export", "--out", str(export)).exit_code == 0
    verified = _cli("audit", "verify", str(export), "--key", vkey)
    assert verified.exit_code == 0, verified.output

    # --- a backup from before the erasure brings nothing of that patient back ------------------------------------
    for wrapped in gone_wraps:
        if settings.is_sqlite:
            assert wrapped in (before_erasure / "vault.db").read_bytes()  # the ciphertext is in the backup ...
    with _running(settings) as (vault, _client):
        for wrapped in gone_wraps:
            with pytest.raises(KeyDestroyed):  # ... but no key opens it
                vault.keys.open_data_key(gone["patient_id"], wrapped)
    old = _cli("restore", str(before_erasure), "--verify", "--force")
    assert old.exit_code == 0, old.output
    assert "1 erasure(s) re-applied" in old.output
    with _running(settings) as (vault, client):
        assert _snapshot(client, login(client, kept["username"])) == before
        assert client.post("/v1/auth/login", json={"username": gone["username"],
                                                   "password": gone["password"]}).status_code == 401
        with vault.session() as session:
            assert list(session.scalars(select(Record.id).where(Record.patient_id == gone["patient_id"]))) == []
        assert not any(vault.blobs.exists(rid) for rid in gone_records)
        # the trail is the backup's again, plus this restore; the replaced one was exported first
        _assert_restore_audited(vault, client, ["allow:started"])
    kept = next((settings.data_dir / "exports").glob("pre-restore-*"))
    assert "exported to" in old.output
    assert _cli("audit", "verify", str(kept), "--key", vkey).exit_code == 0
    assert "vault.restore" in (kept / "events.jsonl").read_text()


def _vkey(vault) -> str:
    from vault.auditing import trail

    return trail.signer(vault).vkey()


def _assert_restore_audited(vault, client, backups_expected: list[str]) -> None:
    from audit.models import AuditEvent

    with vault.session() as session:
        events = list(session.scalars(select(AuditEvent).where(AuditEvent.action == "vault.restore")))
        backups = list(session.scalars(select(AuditEvent).where(AuditEvent.action == "vault.backup")))
    assert len(events) == 1 and all(e.outcome == "allow" for e in events), [(e.outcome, e.reason) for e in events]
    assert "verified=yes" in events[-1].reason
    # the backups' own events are in what they restored; the one refused (a non-empty directory) says so
    assert [f"{e.outcome}:{e.reason}" for e in backups] == backups_expected


def test_restore_refuses_a_damaged_backup_before_touching_anything(drill_settings, tmp_path):
    settings = drill_settings
    with _running(settings) as (_vault, client):
        person = register(client, username=unique("dmg"))
        headers = login(client, person["username"])
        assert upload(client, headers, pdf_bytes("DAMAGE"), category="exam_report",
                      content_type="application/pdf").status_code == 201
        before = _snapshot(client, headers)
    into_keys = _cli("backup", "--out", str(settings.data_dir / "keys" / "backup"))
    assert into_keys.exit_code != 0 and "key store" in into_keys.output
    out = tmp_path / "damaged"
    assert _cli("backup", "--out", str(out)).exit_code == 0
    blob = next(out.glob("blobs/*/*.hvb"))
    blob.write_bytes(blob.read_bytes()[:-1] + bytes([blob.read_bytes()[-1] ^ 1]))
    damaged = _cli("restore", str(out), "--verify", "--force")
    assert damaged.exit_code != 0 and "damaged" in damaged.output and "nothing was changed" in damaged.output
    blob.write_bytes(blob.read_bytes()[:-1] + bytes([blob.read_bytes()[-1] ^ 1]))  # mended
    manifest = json.loads((out / "manifest.json").read_text())
    database = out / manifest["database"]["file"]
    database.write_bytes(b"not a database at all" * 100)  # a backup whose manifest matches, yet will not restore
    manifest["database"].update(size=database.stat().st_size, sha256=hashlib.sha256(database.read_bytes()).hexdigest())
    (out / "manifest.json").write_text(json.dumps(manifest))
    unrestorable = _cli("restore", str(out), "--verify", "--force")
    assert unrestorable.exit_code != 0 and ("quick_check" in unrestorable.output or "pg_restore" in unrestorable.output)
    with _running(settings) as (_vault, client):
        assert _snapshot(client, login(client, person["username"])) == before  # the vault is as it was
    (out / "manifest.json").unlink()
    assert "interrupted" in _cli("restore", str(out), "--force").output
    with _running(settings) as (_vault, client):
        assert _snapshot(client, login(client, person["username"])) == before


def test_a_key_store_copy_older_than_an_erasure_loses_that_kek_again_at_restore(drill_settings, tmp_path, request):
    """The key store's own procedure (docs/backup.md): restored from a copy taken before an erasure, it brings the
    erased patient's KEK back; the data restore that follows destroys it again (the data remembers the erasure)."""
    import sqlite3

    from vault.patients import erasure

    settings = drill_settings
    if not settings.is_sqlite:
        pytest.skip("the key-store copy here is a SQLite file; the PostgreSQL key store is a pg_dump of its schema")
    with _running(settings) as (_vault, client):
        person = register(client, username=unique("kek"))
    keys_db, key_copy = settings.data_dir / "keys" / "keys.db", tmp_path / "keys-before-erasure.db"
    with sqlite3.connect(keys_db) as source, sqlite3.connect(key_copy) as copy:
        source.backup(copy)
    with _running(settings) as (vault, _client), vault.session() as session:
        erasure.erase_by_operator(session, vault, patient_id=person["patient_id"], actor=OPERATOR,
                                  ctx=RequestContext(request_id="drill"))
    backup_dir = tmp_path / "after-erasure"
    assert _cli("backup", "--out", str(backup_dir)).exit_code == 0
    for suffix in ("-wal", "-shm"):
        keys_db.with_name(keys_db.name + suffix).unlink(missing_ok=True)
    shutil.copyfile(key_copy, keys_db)  # the key store goes back to before the erasure
    with _running(settings) as (vault, _client):
        assert vault.keys.patient_key_exists(person["patient_id"])  # the KEK is back ...
    _wipe(settings, request)
    restored = _cli("restore", str(backup_dir), "--verify")
    assert restored.exit_code == 0, restored.output
    assert "1 erasure(s) re-applied" in restored.output
    with _running(settings) as (vault, _client):
        assert not vault.keys.patient_key_exists(person["patient_id"])  # ... and gone again
        assert vault.keystore.is_destroyed(person["patient_id"])
