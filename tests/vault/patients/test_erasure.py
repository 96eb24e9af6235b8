"""Erasure by crypto-shredding (issue 6 item 4; COMPLIANCE PIPL-6, PIPL-9).

The decisive test: a full data backup taken before the erasure, restored afterwards and opened with the same root
key, still cannot decrypt a single record of the erased patient — the KEK is gone from the separate key store — while
another patient's records in the same restored backup decrypt fine.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, inspect, select

from audit.models import AuditEvent
from consent.models import Grant
from kms import CryptoError, KeyDestroyed, KeyStoreError
from tests.conftest import PASSPHRASE
from tests.helpers import (
    PASSWORD,
    blobs,
    login,
    make_id_number,
    make_phone,
    pdf_bytes,
    png_bytes,
    register,
    staff,
    totp_code,
    upload,
)
from vault import fields
from vault.access import audit_append, integrity
from vault.blobs.store import open_store
from vault.db.models import Account, Consent, Patient, Record
from vault.identity import Identity, RequestContext
from vault.patients import erasure
from vault.patients import service as patients
from vault.runtime import open_vault

PROBLEM = "urn:healthvault:problem:"


def _erase(client, headers, **body):
    return client.request("DELETE", "/v1/patients/me", headers=headers, json={"password": PASSWORD, **body})


# --- backup and restore of the DATA store only (the key store is separate by design) ------------------------------

def _sqlite_files(vault) -> list[Path]:
    db = Path(vault.settings.database_url.split("///", 1)[1])
    return [Path(f"{db}{suffix}") for suffix in ("", "-wal", "-shm")]


def _backup(vault, backend: str, dest: Path) -> Path:
    """A full copy of the data database (with its WAL) and of the blob directory, as a nightly backup would take."""
    dest.mkdir()
    blobs.backup(vault.blobs, dest / "blobs")
    if backend == "sqlite":
        for path in _sqlite_files(vault):
            if path.exists():
                shutil.copy2(path, dest / path.name)
        return dest
    schema = vault.settings.database_url.split("search_path%3D", 1)[1]
    dump = subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-n", schema],
                          capture_output=True, check=True)
    (dest / "data.sql").write_bytes(dump.stdout)
    return dest


def _restore(settings, backend: str, backup: Path) -> None:
    """Put the backup back in place of the live data store (the vault must be closed)."""
    blobs.restore(open_store(url=settings.blob_url, local_dir=settings.blob_dir), backup / "blobs")
    if backend == "sqlite":
        db = Path(settings.database_url.split("///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
            saved = backup / f"{db.name}{suffix}"
            if saved.exists():
                shutil.copy2(saved, f"{db}{suffix}")
        return
    schema = settings.database_url.split("search_path%3D", 1)[1]
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-v", "ON_ERROR_STOP=1",
                    "-c", f"DROP SCHEMA {schema} CASCADE"], check=True, capture_output=True)
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-v", "ON_ERROR_STOP=1",
                    "-f", str(backup / "data.sql")], check=True, capture_output=True)


def _decrypt_everything(vault, patient_id: str) -> list[str]:
    """With the vault's keys alone (the root key and the key store), open every profile field and record title."""
    out = []
    with vault.session() as session:
        patient = session.get(Patient, patient_id)
        dek = vault.keys.open_data_key(patient_id, patient.wrapped_dek)
        out.append(fields.open_text(dek, patient.real_name_enc, table="patients", column="real_name",
                                    row_id=patient_id, patient_id=patient_id))
        for record in session.scalars(select(Record).where(Record.patient_id == patient_id)):
            dek = vault.keys.open_data_key(patient_id, record.wrapped_dek)
            out.append(fields.open_text(dek, record.title_enc, table="records", column="title", row_id=record.id,
                                        patient_id=patient_id))
    return out


def test_an_erased_patient_stays_unreadable_after_restoring_a_pre_erasure_backup(client, vault, backend, tmp_path,
                                                                                  clock):
    if backend == "postgres" and not (shutil.which("pg_dump") and shutil.which("psql")):
        pytest.skip("pg_dump/psql not installed")
    gone = register(client, username="shred-me", real_name="被遗忘者")
    kept = register(client, username="keep-me", real_name="留存者")
    gone_headers, kept_headers = login(client, "shred-me"), login(client, "keep-me")
    gone_record = upload(client, gone_headers, pdf_bytes("shred"), category="other", title="gone-title").json()
    upload(client, gone_headers, png_bytes(b"shred"), category="other", title="gone-title-2")
    upload(client, kept_headers, png_bytes(b"keep"), category="other", title="kept-title")
    assert sorted(_decrypt_everything(vault, gone["patient_id"])) == ["gone-title", "gone-title-2", "被遗忘者"]

    backup = _backup(vault, backend, tmp_path / "backup")
    response = _erase(client, gone_headers)
    assert response.status_code == 200, response.text
    assert response.json()["key_versions_destroyed"] >= 1 and response.json()["records_deleted"] == 2

    settings = vault.settings
    vault.close()
    _restore(settings, backend, backup)
    restored = open_vault(settings, PASSPHRASE, clock=clock)  # same root key, fresh process state (no key cache)
    try:
        with restored.session() as session:  # the backup really holds the erased patient's rows again
            assert session.get(Patient, gone["patient_id"]).erased_at is None
            rows = session.scalars(select(Record).where(Record.patient_id == gone["patient_id"])).all()
        assert len(rows) == 2 and all(restored.blobs.exists(r.id) for r in rows)
        with pytest.raises(KeyDestroyed):
            _decrypt_everything(restored, gone["patient_id"])
        for row in rows:
            with pytest.raises(KeyDestroyed):
                restored.keys.open_data_key(gone["patient_id"], row.wrapped_dek)
        assert restored.keystore.is_destroyed(gone["patient_id"])
        # The same backup, the same root key: the other patient is intact, so the restore itself works.
        assert sorted(_decrypt_everything(restored, kept["patient_id"])) == ["kept-title", "留存者"]

        # Through the service on the restored data: the resurrected account signs in, but nothing decrypts.
        from fastapi.testclient import TestClient

        from api.app import create_app

        with TestClient(create_app(restored), raise_server_exceptions=False) as again:
            headers = login(again, "shred-me")
            for url in (f"/v1/records/{gone_record['record_id']}", f"/v1/records/{gone_record['record_id']}/content",
                        "/v1/patients/me"):
                failed = again.get(url, headers=headers)
                assert failed.status_code == 500 and failed.json()["type"] == PROBLEM + "integrity-failure", url
                assert "gone-title" not in failed.text and "被遗忘者" not in failed.text
            assert again.get("/v1/patients/me", headers=login(again, "keep-me")).json()["real_name"] == "留存者"
    finally:
        restored.close()


def test_erasure_reaches_keys_indexes_tokens_grants_blobs_and_leaves_a_pseudonymous_record(client, vault, clock):
    id_number, phone = make_id_number(), make_phone()
    patient = register(client, username="leaver", id_number=id_number, phone=phone)
    pid = patient["patient_id"]
    headers, second_session = login(client, "leaver"), login(client, "leaver")
    record_id = upload(client, headers, png_bytes(b"leave"), category="other").json()["record_id"]
    doctor = staff(client, vault, "doctor", "dr-leave")
    doctor.pop("_secret")
    grant = client.post("/v1/grants", headers=headers, json={
        "grantee": "dr-leave", "record_ids": [record_id], "actions": ["view"], "purpose": "consult",
        "expires_at": (clock() + dt.timedelta(days=1)).isoformat()})
    assert grant.status_code == 201
    assert client.get(f"/v1/records/{record_id}", headers=doctor).status_code == 200
    with vault.session() as session:
        first_new_event = session.scalar(select(func.max(AuditEvent.id))) + 1

    response = _erase(client, headers)
    assert response.status_code == 200, response.text
    with vault.session() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.id >= first_new_event)
                                 .order_by(AuditEvent.id)).all()
    body = response.json()
    assert body == {"erased": True, "patient_pseudonym": audit_append.patient_pseudonym(vault, pid),
                    "key_versions_destroyed": 1, "records_deleted": 1, "grants_revoked": 1}

    # Nobody reaches anything: tokens, sign-in, the grantee.
    assert client.get("/v1/patients/me", headers=second_session).status_code == 401
    assert client.post("/v1/auth/login", json={"username": "leaver", "password": PASSWORD}).status_code == 401
    assert client.get(f"/v1/records/{record_id}", headers=doctor).status_code == 404
    assert client.get("/v1/shared", headers=doctor).json() == []
    # Keys, blobs, rows, blind indexes.
    assert vault.keystore.is_destroyed(pid) and not vault.keys.patient_key_exists(pid)
    with pytest.raises(KeyDestroyed):
        vault.keys.new_data_key(pid)
    assert not vault.blobs.exists(record_id)
    with vault.session() as session:
        assert session.scalar(select(func.count()).select_from(Record).where(Record.patient_id == pid)) == 0
        row = session.get(Patient, pid)
        assert row.erased_at is not None and row.wrapped_dek == b"" and row.real_name_enc == b""
        assert patients.find_ids(session, vault, id_number=id_number) == []
        assert patients.find_ids(session, vault, phone=phone) == []
        account = session.scalar(select(Account).where(Account.patient_id == pid))
        assert not account.is_active and account.username != "leaver" and account.totp_secret_enc is None
        # The revoked grant is sealed again with its revocation (its tag covers it): no false integrity alarm later.
        (revoked,) = session.scalars(select(Grant).where(Grant.patient_id == pid)).all()
        assert revoked.revoked_at is not None
        assert integrity.grant_intact(vault, revoked, revoked_at=revoked.revoked_at, tag=revoked.integrity_mac)
        latest = {}
        for consent in session.scalars(select(Consent).where(Consent.patient_id == pid).order_by(Consent.id)):
            latest[consent.item] = consent.given
        assert latest == {"health_data": False, "id_number": False, "ocr": False}
    actions = [e.action for e in events]
    assert actions[0] == "patient.erase" and actions[-1] == "key.shred" and "grant.revoke" in actions
    pseudonym = audit_append.patient_pseudonym(vault, pid)
    for event in events:
        assert event.patient_pseudonym == pseudonym
        assert pid not in {event.resource_id, event.reason, event.actor, event.grant_id}
        assert "leaver" not in (event.reason or "")
    shred = events[-1]
    assert shred.resource_id is None and shred.reason == "kek-versions:1" and shred.outcome == "allow"

    # The person may come back: the old blind indexes no longer hold their ID number or phone.
    again = register(client, username="leaver-again", id_number=id_number, phone=phone)
    assert again["patient_id"] != pid


def test_erasure_needs_the_password_again_and_the_totp_code_when_enrolled(client, vault, clock):
    register(client, username="careful")
    headers = login(client, "careful")
    wrong = client.request("DELETE", "/v1/patients/me", headers=headers, json={"password": "Wr0ng-Passw0rd!"})
    assert wrong.status_code == 401 and wrong.json()["type"] == PROBLEM + "invalid-credentials"
    assert client.request("DELETE", "/v1/patients/me", headers=headers).status_code == 422
    assert client.get("/v1/records", headers=headers).status_code == 200  # nothing happened

    enrolled = client.post("/v1/auth/totp/enroll", json={"username": "careful", "password": PASSWORD}).json()
    activated = client.post("/v1/auth/totp/activate", json={"username": "careful", "password": PASSWORD,
                                                             "otp": totp_code(enrolled["secret"], clock())})
    assert activated.status_code == 204
    assert client.get("/v1/records", headers=headers).status_code == 401  # sessions from before TOTP ended
    clock.advance(seconds=30)
    headers = login(client, "careful", otp=totp_code(enrolled["secret"], clock()))
    clock.advance(seconds=30)
    missing = _erase(client, headers)
    assert missing.status_code == 401 and missing.json()["type"] == PROBLEM + "otp-required"
    assert _erase(client, headers, otp="000000").status_code == 401
    assert client.get("/v1/records", headers=headers).status_code == 200
    done = _erase(client, headers, otp=totp_code(enrolled["secret"], clock()))
    assert done.status_code == 200, done.text
    with vault.session() as session:
        outcomes = [(e.outcome, e.reason) for e in session.scalars(
            select(AuditEvent).where(AuditEvent.action == "patient.erase").order_by(AuditEvent.id))]
    assert outcomes == [("deny", "reauth-failed")] * 3 + [("allow", "self")]


def test_an_interrupted_erasure_is_finished_by_running_it_again(client, vault, monkeypatch, clock):
    patient = register(client, username="halfway")
    headers = login(client, "halfway")
    record_id = upload(client, headers, png_bytes(b"half"), category="other").json()["record_id"]
    doctor = staff(client, vault, "doctor", "dr-halfway")
    doctor.pop("_secret")
    assert client.post("/v1/grants", headers=headers, json={
        "grantee": "dr-halfway", "record_ids": [record_id], "actions": ["view"], "purpose": "consult",
        "expires_at": (clock() + dt.timedelta(days=1)).isoformat()}).status_code == 201

    def key_store_down(patient_id):
        raise KeyStoreError("key store unreachable")

    monkeypatch.setattr(vault.keys, "destroy_patient_keys", key_store_down)
    failed = _erase(client, headers)
    assert failed.status_code == 503
    # Already out of reach although the KEK could not be destroyed yet.
    assert client.get("/v1/records", headers=headers).status_code == 401
    assert vault.keys.patient_key_exists(patient["patient_id"]) and vault.blobs.exists(record_id)
    # The grants were revoked before any key was to be destroyed: the grantee is refused while the KEK still exists.
    assert client.get(f"/v1/records/{record_id}", headers=doctor).status_code == 404
    with vault.session() as session:
        (grant,) = session.scalars(select(Grant).where(Grant.patient_id == patient["patient_id"])).all()
        assert grant.revoked_at is not None
    monkeypatch.undo()
    with vault.session() as session:
        report = erasure.erase_by_operator(session, vault, patient_id=patient["patient_id"],
                                           actor=Identity(account_id="cli:test", role="operator"),
                                           ctx=RequestContext(request_id="test"))
    assert (report.key_versions_destroyed, report.records_deleted) == (1, 1)
    assert vault.keystore.is_destroyed(patient["patient_id"]) and not vault.blobs.exists(record_id)


def test_operator_erasure_from_the_command_line(client, vault, backend, monkeypatch):
    from vault.cli import main

    patient = register(client, username="by-operator")
    pid = patient["patient_id"]
    record_id = upload(client, login(client, "by-operator"), png_bytes(b"op"), category="other").json()["record_id"]
    env = {"HEALTHVAULT_PASSPHRASE": PASSPHRASE.decode()}
    if backend == "postgres":
        # Same server as the data, own schema (HEALTHVAULT_KEYSTORE_URL unset: the schema is taken from the env).
        env |= {"HEALTHVAULT_DATABASE_URL": vault.settings.database_url,
                "HEALTHVAULT_KEYSTORE_SCHEMA": vault.settings.keystore_schema}
    if vault.settings.blob_url:
        env["HEALTHVAULT_BLOB_URL"] = vault.settings.blob_url  # the operator's configuration names the same store
    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    runner = CliRunner()
    base = ["patients", "erase", "--data-dir", str(vault.settings.data_dir)]

    unconfirmed = runner.invoke(main, [*base, pid], env=env)
    assert unconfirmed.exit_code != 0 and "--yes" in unconfirmed.output
    # A key store that never held this patient's KEK (misconfiguration) must not "succeed".
    elsewhere = runner.invoke(main, [*base, pid, "--yes"], env={
        **env, "HEALTHVAULT_KEYSTORE_URL": f"sqlite:///{vault.settings.data_dir.parent / 'other-keys.db'}"})
    assert elsewhere.exit_code == 1 and "holds no key for this patient" in elsewhere.output
    assert vault.keys.patient_key_exists(pid)
    with vault.session() as session:
        assert session.get(Patient, pid).erased_at is None

    result = runner.invoke(main, [*base, pid, "--yes"], env=env)
    assert result.exit_code == 0, result.output
    pseudonym = audit_append.patient_pseudonym(vault, pid)
    assert f"erased patient {pseudonym}" in result.output and pid not in result.output
    assert vault.keystore.is_destroyed(pid) and not vault.blobs.exists(record_id)
    with vault.session() as session:
        erase_event = session.scalar(select(AuditEvent).where(AuditEvent.action == "patient.erase"))
    assert (erase_event.actor_role, erase_event.reason, erase_event.patient_pseudonym) == (
        "operator", "operator", pseudonym)

    assert "already erased" in runner.invoke(main, [*base, pid, "--yes"], env=env).output
    unknown = runner.invoke(main, [*base, "00000000-0000-0000-0000-000000000000", "--yes"], env=env)
    assert unknown.exit_code == 1 and "No such patient" in unknown.output


def test_the_kms_refuses_an_erased_patient_in_a_fresh_process(vault, client):
    """Belt and braces for the restore test: the tombstone, not this process's memory, refuses the keys."""
    patient = register(client, username="tombstone")
    with vault.session() as session:
        wrapped = session.get(Patient, patient["patient_id"]).wrapped_dek
    assert _erase(client, login(client, "tombstone")).status_code == 200
    fresh = open_vault(dataclasses.replace(vault.settings), PASSPHRASE, migrate=False)
    try:
        with pytest.raises(CryptoError):
            fresh.keys.open_data_key(patient["patient_id"], wrapped)
        with pytest.raises(KeyDestroyed):
            fresh.keys.open_data_key(patient["patient_id"], wrapped)
    finally:
        fresh.close()
    with vault.engine.connect() as conn:  # the data store never held a KEK: nothing a data restore could bring back
        assert not any("kek" in name for name in inspect(conn).get_table_names())


@pytest.mark.postgres
def test_erasure_runs_as_the_postgres_app_role(pg_app_role_settings, clock):
    """The service's role (`healthvault_app`) may do every step of an erasure, and still cannot touch the consent
    history or the trail."""
    from fastapi.testclient import TestClient
    from sqlalchemy.exc import DBAPIError

    from api.app import create_app

    _owner_settings, app_settings = pg_app_role_settings
    app_vault = open_vault(app_settings, PASSPHRASE, clock=clock)
    try:
        with TestClient(create_app(app_vault), raise_server_exceptions=False) as client:
            patient = register(client, username="app-role-leaver")
            headers = login(client, "app-role-leaver")
            record_id = upload(client, headers, png_bytes(b"a"), category="other").json()["record_id"]
            staff(client, app_vault, "doctor", "dr-app-role")
            assert client.post("/v1/grants", headers=headers, json={
                "grantee": "dr-app-role", "record_ids": [record_id], "actions": ["view"], "purpose": "consult",
                "expires_at": (clock() + dt.timedelta(days=1)).isoformat()}).status_code == 201
            response = _erase(client, headers)
            assert response.status_code == 200, response.text
            assert response.json()["grants_revoked"] == 1
        assert app_vault.keystore.is_destroyed(patient["patient_id"])
        for statement in ("UPDATE consents SET given = true", "DELETE FROM consents", "TRUNCATE consents"):
            with pytest.raises(DBAPIError, match=r"permission denied|append-only"):
                with app_vault.engine.begin() as conn:
                    conn.exec_driver_sql(statement)
    finally:
        app_vault.close()
