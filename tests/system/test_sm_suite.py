"""crypto_suite = "sm" (国密, CRY-1) through the whole vault, on SQLite and on the real PostgreSQL.

* A round trip: register, upload, read, blind-index lookup, audit export verified offline with the SM2 key (and each
  checkpoint re-verified by GmSSL and by the OpenSSL command line).
* No AES and no SHA-256 on a data path: the primitives are spied on during a full flow in SM mode.
* Mixed suites: data written in "aes" mode keeps reading after the vault is reopened in "sm" mode (and back), new
  writes carry SM headers, lookups and access logs span the switch, one export verifies both event formats.
* The tamper and at-rest tests run on both suites in tests/system/test_at_rest.py (its `settings` fixture).
* Start-up refuses a runtime that lacks a primitive, with a message naming it.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import inspect
import json
import sys

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi.testclient import TestClient
from sqlalchemy import select

from audit import log as audit_log_module
from audit import verify
from audit.models import AuditEvent, Checkpoint
from kms import blind_index, sm2, suites
from kms.suites import AES_256_GCM, SM4_GCM
from tests.conftest import CHEAP_KDF, PASSPHRASE, make_settings
from tests.helpers import login, make_id_number, png_bytes, register, upload
from tests.helpers.openssl import openssl_verifies_note
from vault.auditing import trail as audit_trail
from vault.db.models import Patient, Record
from vault.patients import service as patients
from vault.runtime import init_data_dir, open_vault


@pytest.fixture
def settings(tmp_path, backend, request):
    """Every vault in this module (the conftest `vault` and `client` fixtures included) runs the SM suite."""
    return make_settings(tmp_path, backend, request, crypto_suite="sm")


def _open(settings, clock=None):
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    return open_vault(settings, PASSPHRASE, **({"clock": clock} if clock else {}))


def _client(vault):
    from api.app import create_app

    return TestClient(create_app(vault), raise_server_exceptions=False)


def _suites_at_rest(vault) -> dict:
    """The suite byte of every stored field ciphertext, blob and DEK, by kind."""
    found = collections.defaultdict(set)
    with vault.session() as session:
        for p in session.scalars(select(Patient)):
            for column in ("real_name_enc", "id_number_enc", "phone_enc", "birth_date_enc"):
                found["fields"].add(getattr(p, column)[1])
            found["deks"].add(vault.keys.open_data_key(p.id, p.wrapped_dek).suite)
        for r in session.scalars(select(Record)):
            for column in ("title_enc", "filename_enc", "sha256_enc", "label_enc"):
                if getattr(r, column):
                    found["fields"].add(getattr(r, column)[1])
            found["deks"].add(vault.keys.open_data_key(r.patient_id, r.wrapped_dek).suite)
            found["blobs"].add(vault.blobs.path_of(r.id).read_bytes()[1])
    return dict(found)


# ---- round trip ---------------------------------------------------------------------------------------------------

def test_sm_round_trip_through_the_whole_vault(client, vault, tmp_path, capfd):
    assert vault.settings.crypto_suite == "sm"
    id_number, phone = make_id_number(birth="19850317"), "13912345678"
    person = register(client, username="sm.wang", real_name="王芳", id_number=id_number, phone=phone)
    headers = login(client, "sm.wang")
    data = png_bytes(b"sm-suite lab sheet" + bytes(200_000))
    created = upload(client, headers, data, title="血常规", filename="lab.png", content_type="image/png")
    assert created.status_code == 201, created.text
    record_id = created.json()["record_id"]
    assert client.get(f"/v1/records/{record_id}", headers=headers).json()["title"] == "血常规"
    assert client.get(f"/v1/records/{record_id}/content", headers=headers).content == data
    me = client.get("/v1/patients/me", headers=headers).json()
    assert me["real_name"] == "王芳" and me["id_number_masked"].startswith(id_number[:4])

    # Everything new is SM4-GCM: field headers, blob headers, and the DEKs themselves (16-byte SM4 keys).
    assert _suites_at_rest(vault) == {"fields": {SM4_GCM}, "deks": {SM4_GCM}, "blobs": {SM4_GCM}}
    dek = vault.keys.new_data_key(person["patient_id"])[0]
    assert dek.suite == SM4_GCM and len(dek.material()) == 16

    # Blind indexes are HMAC-SM3 under the SM key; the AES suite's index key was never even created.
    with vault.session() as session:
        stored = session.get(Patient, person["patient_id"]).id_number_bidx
        assert patients.find_ids(session, vault, id_number=id_number) == [person["patient_id"]]
        assert patients.find_ids(session, vault, phone=phone) == [person["patient_id"]]
    key = vault.keys.service_key("sm:blind-index:id_number")
    import gmssl_pyx

    assert stored == gmssl_pyx.sm3_hmac(key, b"hv/bidx/v1\0id_number\0" + id_number.encode())[:16]
    assert stored == blind_index.compute(key, kind="id_number", normalized_value=id_number, suite=SM4_GCM)
    for aes_purpose in ("blind-index:id_number", "blind-index:phone", "pseudonym", "audit-signing"):
        assert vault.keystore.newest_service_key(aes_purpose) is None

    # The audit trail: SM3 chains (format 2), an SM2-signed export that verifies offline with the pinned key.
    out = tmp_path / "export"
    audit_trail.write_export(vault, since=None, until=None, out=out)
    vkey = audit_trail.signer(vault).vkey()
    assert verify.parse_vkey(vkey).kind == "sm2"
    report = verify.verify_bundle(out, vkey, strict=True)
    assert report.ok, report.problems
    assert report.algorithms == {"signature": "sm2-sm3", "tree_hash": "sm3", "file_hash": "sm3",
                                 "event_hash": ["sm3"]}
    assert json.loads((out / "manifest.json").read_text())["algorithms"] == report.algorithms
    with vault.session() as session:
        assert all(e.chain_id >= verify.SM_CHAIN_BASE for e in session.scalars(select(AuditEvent)))
        notes = [c.note for c in session.scalars(select(Checkpoint))]
    assert all(b',"v":2}' in line for line in (out / "events.jsonl").read_bytes().splitlines())
    # Each checkpoint, checked by two more implementations: GmSSL and the OpenSSL command line.
    key = verify.parse_vkey(vkey)
    for note in notes:
        body, sig = note[:note.rfind("\n\n") + 1], base64.b64decode(note.rsplit(" ", 1)[1])[4:]
        assert sm2.verify(key.public_key, body.encode(), sig)
        assert openssl_verifies_note(tmp_path, vkey, note)
    # A changed event is named.
    lines = (out / "events.jsonl").read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"outcome":"allow"', b'"outcome":"deny"')
    (out / "events.jsonl").write_bytes(b"".join(lines))
    assert verify.verify_bundle(out, vkey).problems[0].startswith("event at leaf 2")
    capfd.readouterr()


# ---- no AES, no SHA-256 on data paths ------------------------------------------------------------------------------

PROJECT = ("kms", "audit", "vault", "api", "consent", "ocr")
# Uses of AES / SHA-256 / Ed25519 that remain in SM mode and are NOT data paths of the SM suite, each with its reason
# (docs/sm-suite.md lists them). Anything else fails the test.
NOT_DATA_PATHS = {
    "kms.local": "the local root-key provider's own wrap (AES-256-GCM key file): a certified SM HSM does the root "
                 "wrap in an SM deployment; out of the suite's scope",
    "kms.keyfile": "the local provider's sealed key file (AES-256-GCM under an Argon2id key, kms/keyfile.py, split "
                   "from kms.local): the same root-key provider, out of the suite's scope",
    "vault.accounts.tokens": "digest of bearer tokens for lookup: a credential, not record data",
    "vault.patients.privacy": "digest of the published privacy notice (public text) stored with each consent",
    "ocr.engine": "fingerprints of the bundled OCR model files (software, not data)",
    # Known gaps, owned elsewhere (reported):
    "kms.manager": "non-secret 16-byte key ids (_label_id) derived with SHA-256 from patient ids / purposes",
    "vault.records.uploads": "the API's `sha256` field: SHA-256 of the uploaded file, stored SM4-sealed",
}


class _Spy:
    """Records which project function reaches AES-GCM, SHA-256 or Ed25519, while letting every call through."""

    def __init__(self, monkeypatch):
        self.seen: collections.Counter = collections.Counter()
        real_sha256, real_new, real_aesgcm = hashlib.sha256, hashlib.new, AESGCM
        spy = self

        def sha256(*args, **kwargs):
            spy.hit("SHA-256")
            return real_sha256(*args, **kwargs)

        def new(name, *args, **kwargs):
            if str(name).lower().replace("-", "").replace("_", "") == "sha256":
                spy.hit("SHA-256")
            return real_new(name, *args, **kwargs)

        class SHA256(hashes.SHA256):
            def __init__(self):
                spy.hit("SHA-256")

        class AESGCMSpy:
            def __init__(self, key):
                self._aead = real_aesgcm(key)

            def __getattr__(self, name):
                method = getattr(self._aead, name)

                def call(*args, **kwargs):
                    spy.hit(f"AES-GCM {name}")
                    return method(*args, **kwargs)
                return call

        class _LooksLikeEd25519(type):
            def __instancecheck__(cls, instance):  # isinstance(key, <patched name>) still works
                return isinstance(instance, Ed25519PrivateKey)

        class Ed25519Spy(metaclass=_LooksLikeEd25519):
            @staticmethod
            def from_private_bytes(data):
                spy.hit("Ed25519")
                return Ed25519PrivateKey.from_private_bytes(data)

            @staticmethod
            def generate():
                spy.hit("Ed25519")
                return Ed25519PrivateKey.generate()

        monkeypatch.setattr(hashlib, "sha256", sha256)
        monkeypatch.setattr(hashlib, "new", new)
        monkeypatch.setattr(hashes, "SHA256", SHA256)
        monkeypatch.setitem(verify.HASHES, "sha256", sha256)
        for name, module in list(sys.modules.items()):
            if module is None or name.split(".")[0] not in PROJECT:
                continue
            for attr, value in list(vars(module).items()):
                if value is real_sha256:
                    monkeypatch.setattr(module, attr, sha256)
                elif value is real_aesgcm:
                    monkeypatch.setattr(module, attr, AESGCMSpy)
                elif value is Ed25519PrivateKey:
                    monkeypatch.setattr(module, attr, Ed25519Spy)

    def hit(self, primitive: str) -> None:
        for frame in inspect.stack()[2:]:
            module = frame.frame.f_globals.get("__name__", "")
            if module.split(".")[0] in PROJECT:
                self.seen[(primitive, module, frame.function)] += 1
                return
        self.seen[(primitive, "?", "?")] += 1

    def data_path_hits(self) -> dict:
        return {k: n for k, n in self.seen.items() if k[1] not in NOT_DATA_PATHS}


def test_no_aes_or_sha256_on_any_data_path_in_sm_mode(settings, tmp_path, capfd):
    monkeypatch = pytest.MonkeyPatch()
    spy = _Spy(monkeypatch)
    try:
        vault = _open(settings)
        try:
            with _client(vault) as client:
                person = register(client, username="spy.li")
                headers = login(client, "spy.li")
                record_id = upload(client, headers, png_bytes(b"spied" + bytes(150_000)),
                                   title="胸片").json()["record_id"]
                assert client.get(f"/v1/records/{record_id}", headers=headers).status_code == 200
                assert client.get(f"/v1/records/{record_id}/content", headers=headers).status_code == 200
                assert client.get("/v1/patients/me", headers=headers).status_code == 200
                assert client.get("/v1/patients/me/access-log", headers=headers).status_code == 200
            with vault.session() as session:
                assert patients.find_ids(session, vault, id_number=person["id_number"]) == [person["patient_id"]]
            audit_trail.checkpoint_now(vault, force=True)
            out = tmp_path / "export"
            audit_trail.write_export(vault, since=None, until=None, out=out)
            assert verify.verify_bundle(out, audit_trail.signer(vault).vkey()).ok
        finally:
            vault.close()
    finally:
        spy_hits, data_hits = dict(spy.seen), spy.data_path_hits()
        monkeypatch.undo()
    capfd.readouterr()
    assert spy_hits, "the spy saw nothing at all: it is not wired"
    assert any(module == "kms.local" for _, module, _ in spy_hits)  # the root wrap is seen (so AES-GCM is spied)
    assert data_hits == {}, f"AES / SHA-256 / Ed25519 on a data path in SM mode: {data_hits}"


def test_the_spy_does_see_every_primitive_in_aes_mode(tmp_path, backend, request):
    """The same flow in AES mode must light the spy up on the data paths, or the SM test above proves nothing."""
    aes = make_settings(tmp_path, backend, request)
    monkeypatch = pytest.MonkeyPatch()
    spy = _Spy(monkeypatch)
    try:
        vault = _open(aes)
        try:
            with _client(vault) as client:
                register(client, username="spy.aes")
                headers = login(client, "spy.aes")
                record_id = upload(client, headers, png_bytes(b"x"), title="t").json()["record_id"]
                client.get(f"/v1/records/{record_id}/content", headers=headers)
            audit_trail.write_export(vault, since=None, until=None, out=tmp_path / "e")
        finally:
            vault.close()
    finally:
        data_hits = spy.data_path_hits()
        monkeypatch.undo()
    modules = {module for _, module, _ in data_hits}
    primitives = {primitive.split()[0] for primitive, _, _ in data_hits}
    assert {"kms.envelope", "kms.blind_index", "audit.verify", "audit.pseudonyms"} <= modules, modules
    assert {"AES-GCM", "SHA-256", "Ed25519"} <= primitives, primitives


# ---- mixed suites ---------------------------------------------------------------------------------------------------

def test_aes_data_keeps_reading_after_the_switch_and_new_writes_are_sm(tmp_path, backend, request, capfd):
    aes_settings = make_settings(tmp_path, backend, request)
    sm_settings = make_settings(tmp_path, backend, request, crypto_suite="sm")
    old_id, old_phone = make_id_number(birth="19600101"), "13600000001"
    old_data = png_bytes(b"written under AES" + bytes(150_000))

    vault = _open(aes_settings)  # 1. an AES vault with a patient, a record and a checkpoint
    try:
        with _client(vault) as client:
            old = register(client, username="old.zhao", real_name="赵一", id_number=old_id, phone=old_phone)
            headers = login(client, "old.zhao")
            old_record = upload(client, headers, old_data, title="旧的").json()["record_id"]
        old_checkpoint = audit_trail.checkpoint_now(vault, force=True)
        old_vkey = audit_trail.signer(vault).vkey()
        assert _suites_at_rest(vault) == {"fields": {AES_256_GCM}, "deks": {AES_256_GCM}, "blobs": {AES_256_GCM}}
    finally:
        vault.close()

    vault = open_vault(sm_settings, PASSPHRASE)  # 2. the same data, reopened in SM mode
    try:
        with _client(vault) as client:
            headers = login(client, "old.zhao")
            assert client.get("/v1/patients/me", headers=headers).json()["real_name"] == "赵一"
            assert client.get(f"/v1/records/{old_record}", headers=headers).json()["title"] == "旧的"
            assert client.get(f"/v1/records/{old_record}/content", headers=headers).content == old_data
            new_record = upload(client, headers, png_bytes(b"written under SM4"), title="新的").json()["record_id"]
            new = register(client, username="new.qian", real_name="钱二")
            # The old patient's ID number is still taken, though its index is HMAC-SHA-256 and new ones HMAC-SM3.
            dup = client.post("/v1/patients/register", json={**{k: v for k, v in new.items() if k != "patient_id"},
                                                              "username": "dup.sun", "id_number": old_id})
            assert dup.status_code == 409, dup.text
            log_page = client.get("/v1/patients/me/access-log", headers=headers).json()["items"]
        creates = [e for e in log_page if e["action"] == "record.create"]
        assert {e["resource_id"] for e in creates} == {old_record, new_record}  # both pseudonym forms found
        assert all(e["actor_name"] == "you" for e in creates)
        with vault.session() as session:
            assert patients.find_ids(session, vault, id_number=old_id) == [old["patient_id"]]
            assert patients.find_ids(session, vault, phone=old_phone) == [old["patient_id"]]
            assert patients.find_ids(session, vault, id_number=new["id_number"]) == [new["patient_id"]]
            new_row, old_row = session.get(Record, new_record), session.get(Record, old_record)
            assert (old_row.title_enc[1], new_row.title_enc[1]) == (AES_256_GCM, SM4_GCM)
            assert session.get(Patient, new["patient_id"]).real_name_enc[1] == SM4_GCM
            assert session.get(Patient, old["patient_id"]).real_name_enc[1] == AES_256_GCM
        assert vault.blobs.path_of(old_record).read_bytes()[1] == AES_256_GCM
        assert vault.blobs.path_of(new_record).read_bytes()[1] == SM4_GCM
        # One export, one SM2 key: the SHA-256 events from before the switch and the SM3 events after it.
        out = tmp_path / "mixed-export"
        audit_trail.write_export(vault, since=None, until=None, out=out)
        vkey = audit_trail.signer(vault).vkey()
        report = verify.verify_bundle(out, vkey, strict=True)
        assert report.ok, report.problems
        assert report.algorithms["event_hash"] == ["sha256", "sm3"] and report.algorithms["signature"] == "sm2-sm3"
        # The old Ed25519 checkpoint still verifies with the old key, and its root is recomputed (SHA-256) from the
        # new export's leaves.bin: one trail across the switch.
        old_cp = verify.verify_note(old_checkpoint.note, old_vkey)
        leaves = (out / "leaves.bin").read_bytes()
        old_leaves = [verify.leaf_hash(leaves[i * 42:(i + 1) * 42]) for i in range(old_cp.size)]
        assert verify.root_from_leaf_hashes(old_leaves) == old_cp.root
        assert all(verify.claims_signer(n, vkey)
                   for n in (out / "checkpoints.txt").read_text().split("\n" + verify.CHECKPOINT_SEPARATOR))
    finally:
        vault.close()

    vault = open_vault(aes_settings, PASSPHRASE)  # 3. and back: SM data still reads in an AES vault
    try:
        with _client(vault) as client:
            headers = login(client, "new.qian")
            assert client.get("/v1/patients/me", headers=headers).json()["real_name"] == "钱二"
            headers = login(client, "old.zhao")
            assert client.get(f"/v1/records/{new_record}/content", headers=headers).status_code == 200
        with vault.session() as session:
            assert patients.find_ids(session, vault, id_number=new["id_number"]) == [new["patient_id"]]
        out = tmp_path / "back-export"
        audit_trail.write_export(vault, since=None, until=None, out=out)
        report = verify.verify_bundle(out, audit_trail.signer(vault).vkey())
        assert report.ok and report.algorithms["signature"] == "ed25519", report.problems
        assert report.algorithms["event_hash"] == ["sha256", "sm3"]
    finally:
        vault.close()
    capfd.readouterr()


# ---- start-up checks ------------------------------------------------------------------------------------------------

def test_startup_refuses_a_runtime_without_sm4(settings, monkeypatch):
    class NoSM4:
        def __init__(self, key):
            from cryptography.exceptions import UnsupportedAlgorithm

            raise UnsupportedAlgorithm("SM4 is not supported by this OpenSSL")

    monkeypatch.setattr(algorithms, "SM4", NoSM4)
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    with pytest.raises(suites.SuiteUnavailable, match="crypto_suite='sm' needs SM4-GCM"):
        open_vault(settings, PASSPHRASE)


def test_startup_refuses_a_runtime_without_sm3(settings, monkeypatch):
    class NoSM3(hashes.SM3):
        def __init__(self):
            from cryptography.exceptions import UnsupportedAlgorithm

            raise UnsupportedAlgorithm("SM3 is not supported by this OpenSSL")

    monkeypatch.setattr(hashes, "SM3", NoSM3)
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    with pytest.raises(suites.SuiteUnavailable, match="SM3"):
        open_vault(settings, PASSPHRASE)


def test_startup_refuses_a_runtime_without_sm2_and_the_cli_says_why(settings, monkeypatch, backend):
    monkeypatch.setitem(sys.modules, "gmssl_pyx", None)  # as if the package were not installed
    sm2._gmssl.cache_clear()
    try:
        init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
        with pytest.raises(suites.SuiteUnavailable, match="gmssl-pyx"):
            open_vault(settings, PASSPHRASE)
        if backend == "sqlite":
            from click.testing import CliRunner

            from vault.cli import main

            result = CliRunner().invoke(main, ["audit", "checkpoint", "--data-dir", str(settings.data_dir)],
                                        env={"HEALTHVAULT_CRYPTO_SUITE": "sm",
                                             "HEALTHVAULT_PASSPHRASE": PASSPHRASE.decode()})
            assert result.exit_code != 0
            assert "gmssl-pyx" in result.output and "Traceback" not in result.output, result.output
    finally:
        sm2._gmssl.cache_clear()


def test_an_aes_vault_needs_no_sm_primitive(tmp_path, backend, request, monkeypatch):
    monkeypatch.setitem(sys.modules, "gmssl_pyx", None)
    monkeypatch.setattr(algorithms, "SM4", None)
    sm2._gmssl.cache_clear()
    try:
        vault = _open(make_settings(tmp_path, backend, request))
        vault.close()
    finally:
        sm2._gmssl.cache_clear()


def test_the_sm2_signer_is_the_audit_signing_key_of_the_sm_suite(vault):
    signer = audit_trail.signer(vault)
    assert signer.kind == "sm2" and signer.hash_name == "sm3"
    seed = vault.keys.service_key("sm:audit-signing")
    assert signer.vkey() == audit_log_module.signer_from_key(vault.settings.audit_origin, seed, sm2=True).vkey()
    assert vault.log_cache.alg == "sm3"


def test_archive_and_tombstone_in_sm_mode(client, vault, clock, tmp_path):
    import datetime as dt

    clock.now = dt.datetime(2026, 1, 10, tzinfo=dt.UTC)
    register(client, username="sm.archive")
    login(client, "sm.archive")
    result = audit_trail.archive(vault, out=tmp_path / "a", now=dt.datetime(2030, 1, 11, tzinfo=dt.UTC))
    assert result["archived"] > 0
    vkey = audit_trail.signer(vault).vkey()
    assert verify.verify_bundle(tmp_path / "a", vkey).ok
    with vault.session() as session:
        tombstone = session.scalars(select(Checkpoint).where(Checkpoint.kind == "tombstone")).one()
    manifest_sm3 = hashes.Hash(hashes.SM3())
    manifest_sm3.update((tmp_path / "a" / "manifest.json").read_bytes())
    assert result["archive_sha256"] == manifest_sm3.finalize().hex()  # (the column keeps its old name)
    assert list(verify.verify_note(tombstone.note, vkey).extensions) == [
        f"pruned-below {result['below_leaf']} {result['archive_sha256']}"]
    login(client, "sm.archive")
    audit_trail.write_export(vault, since=None, until=None, out=tmp_path / "after")
    report = verify.verify_bundle(tmp_path / "after", vkey)
    assert report.ok, report.problems
