"""Rotation at the kms level: DEK wrap formats 1 and 2, KEK suites, root and KEK versions, rewrap, retirement, the
local provider's rotation without a passphrase, key events, and cache hygiene on a controlled clock."""

from __future__ import annotations

import os
import stat
import struct
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import update

from kms import (
    AES_256_GCM,
    SM4_GCM,
    CryptoError,
    DataKey,
    KeyCache,
    KeyDestroyed,
    KeyManager,
    KeyStore,
    KeyStoreError,
    LocalProvider,
    WrappedKey,
    WrongPassphrase,
    envelope,
    suites,
)
from kms.keystore_tables import KeyStoreBase, PatientKek
from kms.manager import KeyEvent
from kms.wrapping import WRAPPED_SIZE, WRAPPED_SIZE_V1, dek_aad_v1

from .conftest import CHEAP_KDF, PASSPHRASE, PG_URL

needs_sm4 = pytest.mark.skipif(not suites.is_supported(SM4_GCM), reason="SM4-GCM not available in this runtime")


def _v1_blob(manager: KeyManager, patient_id: str, dek: DataKey) -> bytes:
    """A format-1 wrap exactly as the code before format 2 wrote it."""
    kek = manager._kek_version(patient_id, patient_id.encode(), 1)
    nonce = os.urandom(12)
    sealed = AESGCM(kek.material()).encrypt(nonce, dek.material(), dek_aad_v1(patient_id.encode(), 1, dek.key_id))
    return struct.pack(">BI16s12s", 1, 1, dek.key_id, nonce) + sealed


def _cold(provider_path, store, clock, **kw) -> KeyManager:
    return KeyManager(LocalProvider.open(provider_path, PASSPHRASE), store, cache=KeyCache(), clock=clock, **kw)


# --- formats --------------------------------------------------------------------------------------------------------
def test_new_wraps_are_format_2_and_name_the_dek_suite(manager):
    manager.create_patient_key("alice")
    dek, blob = manager.new_data_key("alice")
    assert len(blob) == WRAPPED_SIZE == 82
    wrapped = WrappedKey(blob)
    assert (wrapped.format, wrapped.kek_version, wrapped.suite, wrapped.key_id) == (2, 1, AES_256_GCM, dek.key_id)
    assert blob[5] == AES_256_GCM


def test_format_1_wraps_still_open(manager, root_path, store, clock):
    manager.create_patient_key("alice")
    dek = DataKey.generate()
    blob = _v1_blob(manager, "alice", dek)
    assert len(blob) == WRAPPED_SIZE_V1 == 81 and WrappedKey(blob).format == 1
    opened = _cold(root_path, store, clock).open_data_key("alice", blob)
    assert opened.material() == dek.material() and opened.key_id == dek.key_id and opened.suite == AES_256_GCM


def test_every_damage_to_a_format_2_wrap_is_one_crypto_error(manager):
    manager.create_patient_key("alice")
    _, blob = manager.new_data_key("alice")
    cold = KeyManager(manager._provider, manager._store, cache=KeyCache(), clock=manager._clock)
    for i in range(len(blob)):
        for flip in (0x01, 0x80):
            bad = bytearray(blob)
            bad[i] ^= flip
            with pytest.raises(CryptoError) as info:
                cold.open_data_key("alice", bytes(bad))
            assert str(info.value) == "decryption failed"
    for bad in (b"", b"\x02", blob[:-1], blob + b"\0", b"\x03" + blob[1:], os.urandom(len(blob))):
        with pytest.raises(CryptoError):
            cold.open_data_key("alice", bad)
    with pytest.raises(CryptoError):  # another patient
        cold.create_patient_key("bob")
        cold.open_data_key("bob", blob)


def test_the_kek_suite_column_is_bound_into_the_root_wrap(manager, store, root_path, clock):
    manager.create_patient_key("alice")
    _, blob = manager.new_data_key("alice")
    with store.session() as s, s.begin():
        s.execute(update(PatientKek).where(PatientKek.patient_id == "alice").values(suite=SM4_GCM))
    with pytest.raises(CryptoError):
        _cold(root_path, store, clock).open_data_key("alice", blob)


def test_unsupported_suite_refused():
    with pytest.raises(KeyStoreError):
        KeyManager(LocalProvider({1: os.urandom(32)}), None, suite=99)


@needs_sm4
def test_sm4_suite_keks_deks_and_mixed_reads(provider, store, clock, root_path):
    aes = KeyManager(provider, store, cache=KeyCache(), clock=clock)
    aes.create_patient_key("alice")
    aes_dek, aes_blob = aes.new_data_key("alice")
    sm = KeyManager(provider, store, cache=KeyCache(), clock=clock, suite=SM4_GCM)
    sm.create_patient_key("bob")
    assert store.patient_kek("bob", 1).suite == SM4_GCM and store.patient_kek("alice", 1).suite == AES_256_GCM
    sm_dek, sm_blob = sm.new_data_key("bob")
    assert sm_dek.suite == SM4_GCM and len(sm_dek.material()) == 16
    assert len(sm_blob) == 34 + 16 + 16 and WrappedKey(sm_blob).suite == SM4_GCM
    # an SM deployment still reads the AES patient, and an SM4 DEK under the (older) AES KEK
    cold = _cold(root_path, store, clock, suite=SM4_GCM)
    assert cold.open_data_key("alice", aes_blob).material() == aes_dek.material()
    assert cold.open_data_key("bob", sm_blob).material() == sm_dek.material()
    mixed_dek, mixed_blob = cold.new_data_key("alice")
    assert mixed_dek.suite == SM4_GCM and WrappedKey(mixed_blob).suite == SM4_GCM
    # rotating alice's KEK under the SM suite moves the wrapping cipher to SM4 as well
    assert cold.rotate_patient_key("alice") == 2 and store.patient_kek("alice", 2).suite == SM4_GCM
    with cold.dek_rewrapper() as rewrapper:
        moved = rewrapper.rewrap("alice", aes_blob)
    assert WrappedKey(moved).kek_version == 2 and WrappedKey(moved).suite == AES_256_GCM
    assert _cold(root_path, store, clock).open_data_key("alice", moved).material() == aes_dek.material()


# --- KEK rotation and DEK rewrap -------------------------------------------------------------------------------------
def test_kek_rotation_then_rewrap_keeps_the_dek_and_its_ciphertexts(manager, store, root_path, clock):
    manager.create_patient_key("alice")
    dek, old = manager.new_data_key("alice")
    aad = envelope.field_aad(table="records", column="title", row_id="r1", patient_id="alice")
    sealed = envelope.encrypt(dek, "血常规".encode(), aad)
    assert manager.rotate_patient_key("alice") == 2
    assert [r.version for r in store.patient_keks("alice")] == [2, 1]
    _, fresh = manager.new_data_key("alice")
    assert WrappedKey(fresh).kek_version == 2
    with manager.dek_rewrapper() as rewrapper:
        moved = rewrapper.rewrap("alice", old)
        assert rewrapper.rewrap("alice", moved) is None and rewrapper.rewrap("alice", fresh) is None
    assert WrappedKey(moved).kek_version == 2 and WrappedKey(moved).key_id == dek.key_id
    cold = _cold(root_path, store, clock)
    reopened = cold.open_data_key("alice", moved)
    assert envelope.decrypt(reopened, sealed, aad) == "血常规".encode()
    assert cold.open_data_key("alice", old).material() == dek.material()  # old wrap opens until v1 is retired
    assert cold.retire_patient_keks([("alice", 1)]) == 1
    assert cold.retire_patient_keks([("alice", 2)]) == 0  # never the newest
    with pytest.raises(CryptoError):
        _cold(root_path, store, clock).open_data_key("alice", old)
    assert _cold(root_path, store, clock).open_data_key("alice", moved).material() == dek.material()


def test_rewrapper_refuses_erased_and_damaged(manager):
    manager.create_patient_key("alice")
    manager.create_patient_key("bob")
    _, alice = manager.new_data_key("alice")
    _, bob = manager.new_data_key("bob")
    manager.rotate_patient_key("alice")
    manager.destroy_patient_keys("bob")
    with manager.dek_rewrapper() as rewrapper:
        with pytest.raises(KeyDestroyed):
            rewrapper.rewrap("bob", bob)
        bad = bytearray(alice)
        bad[-1] ^= 1
        with pytest.raises(CryptoError):
            rewrapper.rewrap("alice", bytes(bad))
        with pytest.raises(CryptoError):
            rewrapper.rewrap("carol", alice)  # no keys at all


def test_rotate_many_skips_patients_erased_meanwhile(manager, store):
    for name in ("a", "b", "c"):
        manager.create_patient_key(name)
    manager.destroy_patient_keys("b")
    assert manager.rotate_patient_keys(["a", "b", "c"]) == [("a", 2), ("c", 2)]
    with pytest.raises(KeyDestroyed):
        manager.rotate_patient_key("b")
    with pytest.raises(KeyStoreError):
        manager.rotate_patient_key("nobody")


# --- root rotation, rewrap, retirement --------------------------------------------------------------------------------
def test_root_rotation_rewrap_and_retirement(manager, store, root_path, clock):
    manager.create_patient_key("alice")
    manager.create_patient_key("bob")
    dek, blob = manager.new_data_key("alice")
    svc = manager.service_key("pseudonym")
    assert manager.rotate_root() == 2 and manager.current_root_version() == 2
    manager.create_patient_key("carol")  # new wraps use the new root at once
    assert store.patient_kek("carol", 1).root_version == 2
    assert store.root_version_counts() == {1: {"patient_keks": 2, "service_keys": 1},
                                           2: {"patient_keks": 1, "service_keys": 0}}
    with pytest.raises(KeyStoreError, match="still wraps 2 patient KEK"):
        manager.retire_root_version(1)
    first = manager.rewrap_kek_batch(after=None, limit=1)
    assert (first.scanned, first.rewrapped, first.failed, first.last) == (1, 1, 0, ("alice", 1))
    second = manager.rewrap_kek_batch(after=first.last, limit=10)
    assert (second.scanned, second.rewrapped) == (1, 1)
    assert manager.rewrap_kek_batch(after=None, limit=10).scanned == 0  # idempotent: nothing left
    assert manager.rewrap_service_keys().rewrapped == 1
    assert manager.rewrap_service_keys().scanned == 0
    with pytest.raises(KeyStoreError, match="current"):
        manager.retire_root_version(2)
    manager.retire_root_version(1)
    assert LocalProvider.open(root_path, PASSPHRASE).versions() == (2,)
    with pytest.raises(KeyStoreError, match="does not exist"):
        manager.retire_root_version(1)
    cold = _cold(root_path, store, clock)
    assert cold.open_data_key("alice", blob).material() == dek.material()
    assert cold.service_key("pseudonym") == svc


def test_a_damaged_kek_is_counted_and_skipped_not_looped_on(manager, store):
    manager.create_patient_key("alice")
    manager.create_patient_key("bob")
    manager.rotate_root()
    with store.session() as s, s.begin():
        row = s.get(PatientKek, ("alice", 1))
        row.wrapped = row.wrapped[:-1] + bytes([row.wrapped[-1] ^ 1])
    batch = manager.rewrap_kek_batch(after=None, limit=10)
    assert (batch.scanned, batch.rewrapped, batch.failed, batch.failures) == (2, 1, 1, ["alice"])
    assert manager.rewrap_kek_batch(after=batch.last, limit=10).scanned == 0
    with pytest.raises(KeyStoreError, match="still wraps 1 patient KEK"):
        manager.retire_root_version(1)


# --- local provider --------------------------------------------------------------------------------------------------
def test_local_add_version_without_passphrase_after_open_and_create(root_path):
    created = LocalProvider.create(root_path.parent / "other.key", PASSPHRASE, kdf_params=CHEAP_KDF)
    assert created.add_version() == 2
    opened = LocalProvider.open(root_path.parent / "other.key", PASSPHRASE)
    assert opened.versions() == (1, 2)
    assert opened.add_version() == 3 and opened.current_version() == 3
    assert LocalProvider.open(root_path.parent / "other.key", PASSPHRASE).versions() == (1, 2, 3)
    assert "passphrase" not in repr(vars(opened)).lower() or PASSPHRASE not in repr(vars(opened)).encode()
    assert PASSPHRASE.decode() not in repr(vars(opened))


def test_local_rotation_replaces_the_file_atomically_and_privately(root_path, provider):
    before = root_path.stat().st_ino
    provider.add_version()
    assert root_path.stat().st_ino != before  # a new file renamed over the old one, never edited in place
    assert stat.S_IMODE(root_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in root_path.parent.iterdir()) == [root_path.name]


def test_local_development_key_cannot_rotate():
    dev = LocalProvider.from_env_value("A" * 43)
    with pytest.raises(KeyStoreError, match="cannot be rotated"):
        dev.add_version()
    with pytest.raises(KeyStoreError):
        dev.retire_version(1)


def test_local_retire_version(root_path, provider):
    _, old = provider.wrap(b"k" * 32, b"ad")
    provider.add_version()
    with pytest.raises(KeyStoreError, match="current"):
        provider.retire_version(2)
    with pytest.raises(KeyStoreError, match="not in the keyset"):
        provider.retire_version(7)
    provider.retire_version(1)
    assert provider.versions() == (2,)
    with pytest.raises(CryptoError):
        provider.unwrap(1, old, b"ad")
    reopened = LocalProvider.open(root_path, PASSPHRASE)
    assert reopened.versions() == (2,)
    assert reopened.add_version() == 3  # numbers are never reused


def test_a_file_resealed_under_another_passphrase_refuses_the_remembered_key(root_path, provider):
    other = LocalProvider.open(root_path, PASSPHRASE)
    # an operator re-seals the file under a new passphrase (explicit path + passphrase: derives afresh)
    from kms.keyfile import _read, _seal, _unseal, _write_new

    keys, _ = _unseal(_read(root_path), PASSPHRASE, root_path)
    blob, _ = _seal(keys, b"a new passphrase", CHEAP_KDF)
    _write_new(root_path, blob, replace=True)
    with pytest.raises(WrongPassphrase, match="re-sealed"):
        other.add_version()
    assert LocalProvider.open(root_path, b"a new passphrase").versions() == (1,)


def test_another_process_sees_a_new_root_version(root_path, provider):
    other = LocalProvider.open(root_path, PASSPHRASE)
    provider.add_version()
    version, wrapped = provider.wrap(b"k" * 32, b"ad")
    assert version == 2
    assert other.unwrap(2, wrapped, b"ad") == b"k" * 32  # unknown version: reloads the file once
    assert other.current_version() == 2


def test_concurrent_rotations_never_lose_a_version(root_path, provider):
    others = [LocalProvider.open(root_path, PASSPHRASE) for _ in range(4)]
    results, errors = [], []

    def rotate(p):
        try:
            for _ in range(3):
                results.append(p.add_version())
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=rotate, args=(p,)) for p in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == list(range(2, 14))
    assert LocalProvider.open(root_path, PASSPHRASE).versions() == tuple(range(1, 14))


# --- events -----------------------------------------------------------------------------------------------------------
def test_listeners_hear_failed_unwraps_and_shreds_without_key_bytes(manager):
    heard: list[KeyEvent] = []
    manager.add_listener(heard.append)
    manager.add_listener(lambda e: 1 / 0)  # a broken listener changes nothing
    manager.create_patient_key("alice")
    _, blob = manager.new_data_key("alice")
    bad = bytearray(blob)
    bad[-3] ^= 4
    with pytest.raises(CryptoError):
        manager.open_data_key("alice", bytes(bad))
    manager.destroy_patient_keys("alice")
    with pytest.raises(KeyDestroyed):
        manager.open_data_key("alice", blob)
    assert [(e.action, e.kind, e.patient_id, e.detail) for e in heard] == [
        ("key.unwrap_failed", "dek", "alice", "integrity"), ("key.shred", "kek", "alice", None),
        ("key.unwrap_failed", "dek", "alice", "destroyed")]
    assert heard[1].count == 1
    manager.remove_listener(heard.append)


# --- cache hygiene ----------------------------------------------------------------------------------------------------
def test_unwrapped_keys_leave_the_cache_after_max_age_and_are_wiped(provider, store, clock):
    cache = KeyCache(max_age=60, max_uses=1000)
    manager = KeyManager(provider, store, cache=cache, clock=clock)
    manager.create_patient_key("alice")
    _, blob = manager.new_data_key("alice")
    held = [cache.get(k, now=clock()) for k in list(cache._entries)]  # the cache's own objects
    assert len(held) == 2 and not any(k.wiped for k in held)  # the KEK and the DEK
    clock.advance(59)
    manager.open_data_key("alice", blob)
    assert not any(k.wiped for k in held)
    clock.advance(61)
    manager.service_key("pseudonym")  # any use of the cache sweeps: nobody needs to ask for the stale keys again
    assert all(k.wiped for k in held) and all(k._material == bytearray(len(k._material)) for k in held)
    assert len(cache) == 1  # only the fresh service key


def test_unwrapped_keys_leave_the_cache_after_max_uses(provider, store, clock):
    cache = KeyCache(max_age=3600, max_uses=3)
    manager = KeyManager(provider, store, cache=cache, clock=clock)
    manager.create_patient_key("alice")
    _, blob = manager.new_data_key("alice")
    dek_entry = cache._entries[("dek", "alice", blob)].key
    for _ in range(3):
        manager.open_data_key("alice", blob)
    assert not dek_entry.wiped
    reopened = manager.open_data_key("alice", blob)  # 4th use: unwrapped afresh, the used-up one wiped
    assert dek_entry.wiped and not reopened.wiped


def test_sweep_on_demand(clock):
    cache = KeyCache(max_age=10, max_uses=5)
    keys = [DataKey.generate() for _ in range(3)]
    for i, key in enumerate(keys):
        cache.put(i, key, now=clock())
    clock.advance(11)
    assert cache.sweep(now=clock()) == 3 and len(cache) == 0 and all(k.wiped for k in keys)


# --- schema -----------------------------------------------------------------------------------------------------------
def _assert_schema_matches(store: KeyStore) -> None:
    with store.engine.connect() as conn:
        if store.schema:
            conn.exec_driver_sql(f'SET search_path TO "{store.schema}"')
        context = MigrationContext.configure(conn, opts={
            "include_name": lambda name, kind, _parent: not (kind == "table" and name == "kms_alembic_version")})
        assert compare_metadata(context, KeyStoreBase.metadata) == []


def test_key_store_migrations_match_the_models(store):
    _assert_schema_matches(store)


@pytest.mark.postgres
def test_key_store_migrations_match_the_models_on_postgres(pg_schema):
    store = KeyStore(PG_URL, schema=pg_schema)
    try:
        store.migrate()
        _assert_schema_matches(store)
    finally:
        store.dispose()


def test_migration_from_0001_keeps_existing_keks_as_aes(tmp_path, provider, clock):
    """A key store created before 0002 upgrades in place: old KEKs read as suite 1 and still open."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from kms.keystore import MIGRATIONS_DIR, VERSION_TABLE

    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = KeyStore(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["version_table"] = VERSION_TABLE
    with store._engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "kms_0001")
    from kms.wrapping import kek_aad

    material = os.urandom(32)
    root_version, wrapped = provider.wrap(material, kek_aad(b"alice", 1))
    with store._engine.begin() as conn:
        conn.execute(text("INSERT INTO patient_keks (patient_id, version, root_version, wrapped, created_at) "
                          "VALUES ('alice', 1, :r, :w, '2026-01-01 00:00:00')"), {"r": root_version, "w": wrapped})
    store.migrate()
    assert store.patient_kek("alice", 1).suite == AES_256_GCM
    manager = KeyManager(provider, store, cache=KeyCache(), clock=clock)
    dek, blob = manager.new_data_key("alice")
    assert manager.open_data_key("alice", blob) == dek
    store.dispose()
