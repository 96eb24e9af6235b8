import os
import threading

import pytest

from kms import (
    CryptoError,
    DataKey,
    KeyCache,
    KeyDestroyed,
    KeyManager,
    KeyStore,
    KeyStoreError,
    LocalProvider,
    WrappedKey,
    envelope,
)
from kms.wrapping import WRAPPED_SIZE

from .conftest import CHEAP_KDF, PASSPHRASE


def test_patient_key_and_data_key_round_trip(manager):
    assert manager.create_patient_key("alice") == 1
    assert manager.patient_key_exists("alice") and not manager.patient_key_exists("bob")
    dek, wrapped = manager.new_data_key("alice")
    assert isinstance(dek, DataKey) and isinstance(wrapped, bytes) and len(wrapped) == WRAPPED_SIZE
    assert WrappedKey(wrapped).kek_version == 1 and WrappedKey(wrapped).key_id == dek.key_id
    ct = envelope.encrypt(dek, b"blood type O", b"ad")
    opened = manager.open_data_key("alice", wrapped)
    assert opened == dek and envelope.decrypt(opened, ct, b"ad") == b"blood type O"
    assert manager.open_data_key("alice", WrappedKey(wrapped)) == dek


def test_each_data_key_is_fresh(manager):
    manager.create_patient_key("alice")
    (a, wa), (b, wb) = manager.new_data_key("alice"), manager.new_data_key("alice")
    assert a != b and wa != wb and a.material() != b.material()


def test_open_after_restart_without_cache(provider, store, store_url, root_path, manager):
    manager.create_patient_key("alice")
    dek, wrapped = manager.new_data_key("alice")
    restarted = KeyManager(LocalProvider.open(root_path, PASSPHRASE), KeyStore(store_url))
    assert restarted.open_data_key("alice", wrapped).material() == dek.material()


def test_dek_of_patient_a_does_not_open_as_patient_b(manager, provider, store, clock):
    manager.create_patient_key("alice")
    manager.create_patient_key("bob")
    _, wrapped = manager.new_data_key("alice")
    with pytest.raises(CryptoError) as info:
        manager.open_data_key("bob", wrapped)
    assert not isinstance(info.value, KeyDestroyed)
    cold = KeyManager(provider, store, cache=KeyCache(), clock=clock)
    with pytest.raises(CryptoError):
        cold.open_data_key("bob", wrapped)
    with pytest.raises(CryptoError):
        cold.open_data_key("carol", wrapped)  # no key at all: plain CryptoError


def test_damaged_wrapped_key_fails_at_every_byte(manager, provider, store, clock):
    manager.create_patient_key("alice")
    _, wrapped = manager.new_data_key("alice")
    for position in range(len(wrapped)):
        damaged = bytearray(wrapped)
        damaged[position] ^= 0x01
        with pytest.raises(CryptoError):
            KeyManager(provider, store, cache=KeyCache(), clock=clock).open_data_key("alice", bytes(damaged))
    for bad in (b"", wrapped[:-1], wrapped + b"\x00", os.urandom(WRAPPED_SIZE)):
        with pytest.raises(CryptoError):
            manager.open_data_key("alice", bad)


def test_another_root_key_cannot_unwrap(manager, store, tmp_path, clock):
    manager.create_patient_key("alice")
    _, wrapped = manager.new_data_key("alice")
    stranger = LocalProvider.create(tmp_path / "other.key", PASSPHRASE, kdf_params=CHEAP_KDF)
    with pytest.raises(CryptoError):
        KeyManager(stranger, store, clock=clock).open_data_key("alice", wrapped)


def test_destroy_then_key_destroyed_even_after_restart(manager, store_url, root_path, tmp_path):
    manager.create_patient_key("alice")
    manager.create_patient_key("bob")
    _dek, wrapped = manager.new_data_key("alice")
    _, wrapped_bob = manager.new_data_key("bob")
    manager.open_data_key("alice", wrapped)  # now cached
    assert manager.destroy_patient_keys("alice") == 1
    with pytest.raises(KeyDestroyed):
        manager.open_data_key("alice", wrapped)
    with pytest.raises(KeyDestroyed):
        manager.new_data_key("alice")
    assert not manager.patient_key_exists("alice")
    assert manager.open_data_key("bob", wrapped_bob)  # others unaffected
    restarted = KeyManager(LocalProvider.open(root_path, PASSPHRASE), KeyStore(store_url))
    with pytest.raises(KeyDestroyed):
        restarted.open_data_key("alice", wrapped)
    with pytest.raises(KeyDestroyed):
        restarted.new_data_key("alice")
    with pytest.raises(KeyStoreError):
        restarted.create_patient_key("alice")  # an erased id is never given a fresh key
    assert restarted.destroy_patient_keys("alice") == 0


def test_destroy_overwrites_the_wrapped_kek_on_disk(manager, store, tmp_path):
    manager.create_patient_key("alice")
    (row,) = store.patient_keks("alice")
    manager.destroy_patient_keys("alice")
    store.dispose()
    for path in tmp_path.iterdir():
        if path.name.startswith("keys.db"):
            assert row.wrapped not in path.read_bytes(), path.name


def test_other_process_sees_destruction_within_cache_max_age(provider, store, clock):
    reader = KeyManager(provider, store, cache=KeyCache(max_age=60), clock=clock)
    eraser = KeyManager(provider, store, cache=KeyCache(max_age=60), clock=clock)
    reader.create_patient_key("alice")
    _, wrapped = reader.new_data_key("alice")
    reader.open_data_key("alice", wrapped)
    eraser.destroy_patient_keys("alice")
    reader.open_data_key("alice", wrapped)  # documented window: still cached in the other process
    clock.advance(61)
    with pytest.raises(KeyDestroyed):
        reader.open_data_key("alice", wrapped)


def test_create_twice_and_unknown_patient(manager):
    manager.create_patient_key("alice")
    with pytest.raises(KeyStoreError):
        manager.create_patient_key("alice")
    with pytest.raises(KeyStoreError):
        manager.new_data_key("nobody")
    with pytest.raises(ValueError):
        manager.create_patient_key("x" * 65)
    with pytest.raises(ValueError):
        manager.create_patient_key("")


def test_bulk_keys_read_the_store_once_and_wrap_for_their_own_patient(manager, store, monkeypatch):
    manager.create_patient_keys(["alice", "bob", "carol"])
    assert [r.version for r in store.patient_keks("bob")] == [1]
    reads = []
    newest = store.newest_kek_versions
    monkeypatch.setattr(store, "newest_kek_versions", lambda ids: reads.append(1) or newest(ids))
    owners = ["alice", "bob", "alice", "carol"]
    keys = manager.new_data_keys(owners)
    assert len(reads) == 1 and len(keys) == 4
    assert len({wrapped for _dek, wrapped in keys}) == 4  # a fresh DEK each, the repeated patient too
    for owner, (dek, wrapped) in zip(owners, keys, strict=True):
        assert manager.open_data_key(owner, wrapped).material() == dek.material()
        other = "carol" if owner != "carol" else "bob"
        with pytest.raises(CryptoError):
            manager.open_data_key(other, wrapped)


def test_bulk_keys_fail_whole_on_a_keyed_erased_or_unknown_patient(provider, store, clock):
    reader = KeyManager(provider, store, cache=KeyCache(max_age=60), clock=clock)
    eraser = KeyManager(provider, store, cache=KeyCache(max_age=60), clock=clock)
    reader.create_patient_keys(["alice", "bob"])
    with pytest.raises(KeyStoreError):
        reader.create_patient_keys(["dave", "alice"])  # alice has a key: nothing is written, dave included
    assert store.patient_keks("dave") == []
    with pytest.raises(KeyStoreError):
        reader.new_data_keys(["alice", "nobody"])
    reader.new_data_keys(["alice", "bob"])  # KEKs now cached in the reader
    eraser.destroy_patient_keys("bob")
    with pytest.raises(KeyDestroyed):  # at once, not after the cache's max_age: new keys read the store
        reader.new_data_keys(["alice", "bob"])
    with pytest.raises(KeyStoreError):
        reader.create_patient_keys(["erin", "bob"])  # an erased id is never given a fresh key
    assert store.patient_keks("erin") == []


def test_service_keys_stable_across_restarts_and_separate_per_purpose(manager, store_url, root_path):
    pseudonym = manager.service_key("pseudonym")
    id_index = manager.service_key("blind-index:id_number")
    phone_index = manager.service_key("blind-index:phone")
    assert len({pseudonym, id_index, phone_index}) == 3
    assert all(len(k) == 32 for k in (pseudonym, id_index, phone_index))
    assert manager.service_key("pseudonym") == pseudonym
    restarted = KeyManager(LocalProvider.open(root_path, PASSPHRASE), KeyStore(store_url))
    assert restarted.service_key("pseudonym") == pseudonym
    assert restarted.service_key("blind-index:phone") == phone_index


def test_service_key_created_once_when_two_managers_race(provider, store, clock):
    a = KeyManager(provider, store, cache=KeyCache(), clock=clock)
    b = KeyManager(provider, store, cache=KeyCache(), clock=clock)
    assert a.service_key("token-signing") == b.service_key("token-signing")
    assert store.count_rows()["service_keys"] == 1


def test_caller_wipe_does_not_damage_the_cache(manager):
    manager.create_patient_key("alice")
    dek, wrapped = manager.new_data_key("alice")
    ct = envelope.encrypt(dek, b"x", b"ad")
    dek.wipe()
    again = manager.open_data_key("alice", wrapped)
    assert envelope.decrypt(again, ct, b"ad") == b"x"
    other = manager.open_data_key("alice", wrapped)
    again.wipe()
    assert envelope.decrypt(other, ct, b"ad") == b"x"


def test_cache_eviction_does_not_pull_a_key_from_a_caller(provider, store, clock):
    manager = KeyManager(provider, store, cache=KeyCache(max_uses=1), clock=clock)
    manager.create_patient_key("alice")
    dek, wrapped = manager.new_data_key("alice")
    held = manager.open_data_key("alice", wrapped)
    manager.open_data_key("alice", wrapped)  # over max_uses: evicted, wiped, re-unwrapped
    clock.advance(10_000)
    manager.open_data_key("alice", wrapped)  # expired: evicted, wiped, re-unwrapped
    assert not held.wiped and held.material() == dek.material()


def test_root_rotation_keeps_old_wraps_readable(manager, provider, root_path, store, clock):
    manager.create_patient_key("alice")
    _, old_wrapped = manager.new_data_key("alice")
    provider.add_version(root_path, PASSPHRASE)
    manager.create_patient_key("bob")
    rows = {r.patient_id: r.root_version for r in store.patient_keks("alice") + store.patient_keks("bob")}
    assert rows == {"alice": 1, "bob": 2}
    cold = KeyManager(LocalProvider.open(root_path, PASSPHRASE), store, cache=KeyCache(), clock=clock)
    assert cold.open_data_key("alice", old_wrapped)


def test_concurrent_opens(manager):
    manager.create_patient_key("alice")
    wrapped = [manager.new_data_key("alice")[1] for _ in range(5)]
    errors = []

    def worker():
        try:
            for i in range(200):
                manager.open_data_key("alice", wrapped[i % 5])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_repr_reveals_nothing(manager):
    manager.create_patient_key("alice")
    assert "alice" not in repr(manager)
