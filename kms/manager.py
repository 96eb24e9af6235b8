"""The facade vault uses: patient KEKs, record DEKs and single-purpose service keys, and their rotation.

Owns: the middle of the key hierarchy (root -> patient KEK -> DEK), caching of unwrapped keys, crypto-shredding, and
the key-store side of rotation: new root and KEK versions, and retiring versions nothing references any more. The
wrap formats and their AAD (binding every wrapped key to its owner, version and suite) are in kms.wrapping; moving
wrapped keys to the newest root version or KEK (rewrap) is in kms.rewrap, reached through this class.
Never: stores or returns an unwrapped KEK, lets a DEK wrapped for one patient open as another's, derives one service
key from another (each purpose has its own random key, so exposing one never exposes the rest), reports why an
unwrap failed (CryptoError, or KeyDestroyed when the patient was erased), re-encrypts data (a rotation changes only
wrapped keys; field and file ciphertexts keep their DEK), or retires a root version a wrapped key still names.

The suite given to KeyManager (`suite=`, a kms.suites id) is the suite of every NEW KEK and DEK. A DEK is wrapped
with its KEK's own cipher, so after switching suites, `rotate_patient_key` (CLI: `keys rotate --all-keks`) then a
rewrap move the wrapping over too; old wraps keep opening because every wrap names its versions and suites.

Events: what happens inside other flows (a crypto-shred, a failed unwrap) is reported to listeners as a KeyEvent
(ids and counts only, never key bytes); vault audits them. Explicit key-management calls (rotate, rewrap, retire)
are audited by their caller, which knows who asked.

Destroyed patients: KeyStore leaves a tombstone, so KeyDestroyed survives restarts. Within this process, destruction
also evicts cached keys at once; other processes drop theirs within the cache's max_age (a known window).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable

from kms import rewrap, suites
from kms.cache import KeyCache
from kms.errors import CryptoError, KeyDestroyed, KeyStoreError
from kms.keys import KEY_ID_SIZE, DataKey
from kms.keystore import KeyStore
from kms.keystore_tables import TOMBSTONE_VERSION, PatientKek, ServiceKey
from kms.provider import RootKeyProvider
from kms.rewrap import DekRewrapper, RewrapBatch
from kms.suites import AES_256_GCM, KEY_SIZE
from kms.wrapping import WrappedKey, encode_name, kek_aad, parse, svc_aad, unwrap_dek, wrap_dek, zero


@dataclasses.dataclass(frozen=True)
class KeyEvent:
    """Something key-related happened inside another flow. Ids and counts only: never key bytes or plaintext."""

    action: str  # "key.shred" | "key.unwrap_failed" (audit vocabulary)
    kind: str  # "kek" | "dek" | "service"
    patient_id: str | None = None
    name: str | None = None  # a service-key purpose
    count: int | None = None
    detail: str | None = None  # short code: "destroyed", "integrity"


def _label_id(domain: bytes, name: bytes) -> bytes:
    """A stable, non-secret 16-byte id for a KEK or service key, so they fit the DataKey shape in the cache."""
    return hashlib.sha256(domain + name).digest()[:KEY_ID_SIZE]


def _key(material: bytes | bytearray, *, key_id: bytes, version: int, suite: int) -> DataKey:
    """A DataKey from unwrapped bytes; any shape problem is the one opaque CryptoError."""
    try:
        if len(material) != suites.key_size(suite):
            raise CryptoError()
        return DataKey(material, key_id=key_id, version=version, suite=suite)
    except (ValueError, TypeError):
        raise CryptoError() from None


class KeyManager:
    def __init__(self, provider: RootKeyProvider, store: KeyStore, *, cache: KeyCache | None = None,
                 clock: Callable[[], float] = time.time, suite: int = AES_256_GCM) -> None:
        if not suites.is_supported(suite):
            raise KeyStoreError(f"cipher suite {suite!r} is not available in this runtime")
        self._provider = provider
        self._store = store
        self._cache = cache if cache is not None else KeyCache()
        self._clock = clock
        self._suite = suite
        self._destroyed: set[str] = set()  # erased in this process: refuse even a key another thread re-cached
        self._lock = threading.Lock()
        self._listeners: list[Callable[[KeyEvent], None]] = []

    def __repr__(self) -> str:
        return (f"KeyManager(provider={getattr(self._provider, 'name', '?')!r}, store={self._store!r}, "
                f"suite={self._suite})")

    @property
    def suite(self) -> int:
        return self._suite

    @property
    def provider_name(self) -> str:
        return str(getattr(self._provider, "name", "?"))

    # --- events ---------------------------------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[KeyEvent], None]) -> None:
        with self._lock:
            if listener not in self._listeners:
                self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[KeyEvent], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _emit(self, event: KeyEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001, S110 - a listener must never change what a key operation returns
                pass

    # --- helpers --------------------------------------------------------------------------------------------------
    def _utcnow(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)

    def utcnow(self) -> dt.datetime:
        """This manager's clock: what it writes into key-store `created_at` columns."""
        return self._utcnow()

    def _cached(self, cache_key: Hashable) -> DataKey | None:
        """A private clone of a cached key, or None (also when an eviction wiped it between get and clone)."""
        key = self._cache.get(cache_key, now=self._clock())
        if key is None:
            return None
        try:
            return key._clone()
        except ValueError:
            return None

    def _remember(self, cache_key: Hashable, key: DataKey) -> DataKey:
        """Cache `key` and hand back a clone the caller owns (and may wipe)."""
        clone = key._clone()
        self._cache.put(cache_key, key, now=self._clock())
        return clone

    def _raise_if_destroyed_here(self, patient_id: str) -> None:
        if patient_id in self._destroyed:
            raise KeyDestroyed()

    def _kek(self, patient_id: str, patient: bytes, row: PatientKek) -> DataKey:
        cache_key = ("kek", patient_id, row.version)
        cached = self._cached(cache_key)
        if cached is not None:
            return cached
        suite = row.suite or AES_256_GCM
        material = bytearray(self._provider.unwrap(row.root_version, row.wrapped,
                                                   kek_aad(patient, row.version, suite)))
        try:
            kek = _key(material, key_id=_label_id(b"hv/kek-id\0", patient), version=row.version, suite=suite)
        finally:
            zero(material)
        return self._remember(cache_key, kek)

    def _kek_version(self, patient_id: str, patient: bytes, version: int) -> DataKey:
        cached = self._cached(("kek", patient_id, version))
        if cached is not None:
            return cached
        row = self._store.patient_kek(patient_id, version)
        if row is None or version == TOMBSTONE_VERSION:
            if self._store.is_destroyed(patient_id):
                raise KeyDestroyed()
            raise CryptoError()
        return self._kek(patient_id, patient, row)

    def _new_kek_row(self, patient_id: str, patient: bytes, version: int) -> tuple[PatientKek, DataKey]:
        material = bytearray(os.urandom(suites.key_size(self._suite)))
        try:
            root_version, wrapped = self._provider.wrap(bytes(material), kek_aad(patient, version, self._suite))
            kek = _key(material, key_id=_label_id(b"hv/kek-id\0", patient), version=version, suite=self._suite)
        finally:
            zero(material)
        row = PatientKek(patient_id=patient_id, version=version, root_version=root_version, wrapped=wrapped,
                         created_at=self._utcnow(), destroyed_at=None, suite=self._suite)
        return row, kek

    # --- patient keys ---------------------------------------------------------------------------------------------
    def create_patient_key(self, patient_id: str) -> int:
        self.create_patient_keys([patient_id])
        return 1

    def create_patient_keys(self, patient_ids: Iterable[str]) -> None:
        """A first KEK for each new patient, in one key-store transaction (bulk import); all or nothing."""
        names = [(patient_id, encode_name(patient_id, "patient_id")) for patient_id in dict.fromkeys(patient_ids)]
        newest = self._store.newest_kek_versions(patient_id for patient_id, _ in names)
        if TOMBSTONE_VERSION in newest.values():
            raise KeyStoreError("this patient's keys were destroyed; an erased patient id cannot be reused")
        if newest:
            raise KeyStoreError("this patient already has a key")
        planned = [self._new_kek_row(patient_id, patient, 1) for patient_id, patient in names]
        self._store.add_patient_keks([row for row, _ in planned])
        for row, kek in planned:
            self._remember(("kek", row.patient_id, row.version), kek).wipe()  # the cache keeps `kek` itself

    def patient_key_exists(self, patient_id: str) -> bool:
        encode_name(patient_id, "patient_id")
        return any(r.version != TOMBSTONE_VERSION for r in self._store.patient_keks(patient_id))

    def new_data_key(self, patient_id: str) -> tuple[DataKey, bytes]:
        """A fresh DEK (in this manager's suite) and its format-2 wrap under the patient's newest KEK.

        Reads the key store every time (new records are rarer than reads), so a patient erased by another process
        never gets new data wrapped under a stale cached KEK, and a KEK rotated by another process is used at once.
        """
        return self.new_data_keys([patient_id])[0]

    def new_data_keys(self, patient_ids: Iterable[str]) -> list[tuple[DataKey, bytes]]:
        """new_data_key for each id in order (an id may repeat), reading the key store's newest versions once for
        the lot (a bulk import's path). KeyDestroyed / KeyStoreError if any patient was erased / has no key."""
        ids = [(patient_id, encode_name(patient_id, "patient_id")) for patient_id in patient_ids]
        newest = self._store.newest_kek_versions(patient_id for patient_id, _ in ids)
        for patient_id, _ in ids:  # every refusal before any key is made
            self._raise_if_destroyed_here(patient_id)
            if newest.get(patient_id) == TOMBSTONE_VERSION:
                raise KeyDestroyed()
            if patient_id not in newest:
                raise KeyStoreError("no key for this patient: create_patient_key() first")
        out: list[tuple[DataKey, bytes]] = []
        for patient_id, patient in ids:
            try:
                kek = self._kek_version(patient_id, patient, newest[patient_id])
            except CryptoError as exc:
                for made, _blob in out:
                    made.wipe()
                if not isinstance(exc, KeyDestroyed):
                    self._emit(KeyEvent("key.unwrap_failed", "kek", patient_id=patient_id, detail="integrity"))
                raise
            material = bytearray(os.urandom(suites.key_size(self._suite)))
            try:
                dek = DataKey(material, key_id=os.urandom(KEY_ID_SIZE), version=1, suite=self._suite)
                blob = wrap_dek(patient, kek, material, dek.key_id, self._suite)
            finally:
                kek.wipe()
                zero(material)
            out.append((self._remember(("dek", patient_id, blob), dek), blob))
        return out

    def open_data_key(self, patient_id: str, wrapped: bytes | WrappedKey) -> DataKey:
        patient = encode_name(patient_id, "patient_id")
        blob = bytes(wrapped.blob if isinstance(wrapped, WrappedKey) else wrapped)
        cache_key = ("dek", patient_id, blob)
        try:
            self._raise_if_destroyed_here(patient_id)
            cached = self._cached(cache_key)
            if cached is not None:
                return cached
            parsed = parse(blob)
            kek = self._kek_version(patient_id, patient, parsed.kek_version)
            try:
                material = unwrap_dek(patient, kek, parsed)
            finally:
                kek.wipe()
            dek = self._remember(cache_key, _key(material, key_id=parsed.key_id, version=1, suite=parsed.suite))
        except CryptoError as exc:
            self._emit(KeyEvent("key.unwrap_failed", "dek", patient_id=patient_id,
                                detail="destroyed" if isinstance(exc, KeyDestroyed) else "integrity"))
            raise
        if patient_id in self._destroyed:  # erased while we were unwrapping
            self._cache.evict(cache_key)
            dek.wipe()
            raise KeyDestroyed()
        return dek

    def forget(self, patient_id: str | None = None) -> None:
        """Drop cached keys without destroying anything: one patient's KEKs and DEKs, or (None) every cached key.
        Another process erased the patient or retired key versions; the next use reads the key store again."""
        if patient_id is None:
            self._cache.evict_where(lambda _key: True)
            return
        self._cache.evict_where(lambda k: isinstance(k, tuple) and len(k) == 3 and k[0] in ("kek", "dek")
                                and k[1] == patient_id)

    def destroy_patient_keys(self, patient_id: str) -> int:
        """Crypto-shred: every record of the patient becomes unreadable, in backups too (keys live apart from data)."""
        encode_name(patient_id, "patient_id")
        with self._lock:
            self._destroyed.add(patient_id)
        count = self._store.destroy_patient(patient_id, now=self._utcnow())
        self._cache.evict_where(lambda k: isinstance(k, tuple) and len(k) == 3 and k[0] in ("kek", "dek")
                                and k[1] == patient_id)
        self._emit(KeyEvent("key.shred", "kek", patient_id=patient_id, count=count))
        return count

    # --- service keys ---------------------------------------------------------------------------------------------
    def service_key(self, purpose: str) -> bytes:
        """The newest 32-byte key for one purpose, created (random, root-wrapped) on first use."""
        name = encode_name(purpose, "purpose")
        cache_key = ("svc", purpose)
        cached = self._cached(cache_key)
        if cached is not None:
            return cached.material()
        row = self._store.newest_service_key(purpose)
        if row is None:
            fresh = os.urandom(KEY_SIZE)
            root_version, wrapped = self._provider.wrap(fresh, svc_aad(name, 1))
            row = ServiceKey(purpose=purpose, version=1, root_version=root_version, wrapped=wrapped,
                             created_at=self._utcnow())
            if not self._store.add_service_key(row):  # another process created it first: use theirs
                row = self._store.newest_service_key(purpose)
                if row is None:
                    raise KeyStoreError("service key could not be created or read")
        try:
            material = bytearray(self._provider.unwrap(row.root_version, row.wrapped, svc_aad(name, row.version)))
            try:
                key = _key(material, key_id=_label_id(b"hv/svc-id\0", name), version=row.version, suite=AES_256_GCM)
            finally:
                zero(material)
        except CryptoError:
            self._emit(KeyEvent("key.unwrap_failed", "service", name=purpose, detail="integrity"))
            raise
        return self._remember(cache_key, key).material()

    # --- root versions --------------------------------------------------------------------------------------------
    def current_root_version(self) -> int:
        return self._provider.current_version()

    def root_versions(self) -> tuple[int, ...]:
        versions = getattr(self._provider, "versions", None)
        try:
            if versions is None:
                raise NotImplementedError
            return tuple(sorted(versions() if callable(versions) else versions))
        except NotImplementedError:
            return (self._provider.current_version(),)

    def _provider_call(self, name: str, *args: object) -> object:
        method = getattr(self._provider, name, None)
        try:
            if method is None:
                raise NotImplementedError
            return method(*args)
        except NotImplementedError:
            raise KeyStoreError(f"the {getattr(self._provider, 'name', '?')} root-key provider cannot "
                                f"{name.replace('_', ' ')}") from None

    def rotate_root(self) -> int:
        """A new root version in the provider; every wrap from now on uses it. Returns the new version."""
        version = self._provider_call("add_version")
        if not isinstance(version, int):
            raise KeyStoreError("the root-key provider did not return a version number")
        return version

    def retire_root_version(self, version: int) -> None:
        """Remove an old root version from the provider; refused while any KEK or service key is wrapped by it."""
        if version == self._provider.current_version():
            raise KeyStoreError(f"root version {version} is the current one and cannot be retired")
        if version not in self.root_versions():
            raise KeyStoreError(f"root version {version} does not exist (already retired?)")
        counts = self._store.root_version_counts().get(version)
        if counts and (counts["patient_keks"] or counts["service_keys"]):
            raise KeyStoreError(f"root version {version} still wraps {counts['patient_keks']} patient KEK(s) and "
                                f"{counts['service_keys']} service key(s): run `healthvault keys rewrap` first")
        self._provider_call("retire_version", version)

    # --- KEK versions ---------------------------------------------------------------------------------------------
    def rotate_patient_key(self, patient_id: str) -> int:
        """A new KEK version for one patient (in this manager's suite); new DEKs are wrapped under it at once."""
        return self.rotate_patient_keys([patient_id])[0][1]

    def rotate_patient_keys(self, patient_ids: Iterable[str]) -> list[tuple[str, int]]:
        """A new KEK version for each patient, written in one key-store transaction; [(patient_id, version)].

        An erased patient is refused (KeyDestroyed) when named alone; in a batch, patients erased meanwhile are
        skipped."""
        ids = list(dict.fromkeys(patient_ids))
        newest = self._store.newest_kek_versions(ids)
        planned: list[tuple[PatientKek, DataKey]] = []
        for patient_id in ids:
            patient = encode_name(patient_id, "patient_id")
            top = newest.get(patient_id)
            if top is None:
                raise KeyStoreError("no key for this patient: create_patient_key() first")
            if top == TOMBSTONE_VERSION or patient_id in self._destroyed:
                if len(ids) == 1:
                    raise KeyDestroyed()
                continue
            planned.append(self._new_kek_row(patient_id, patient, top + 1))
        try:
            self._store.add_patient_keks([row for row, _ in planned])
            done = planned
        except KeyStoreError:
            if len(planned) <= 1:
                raise
            done = []  # someone rotated or erased one of them meanwhile: go one by one, skipping the conflicts
            for row, kek in planned:
                try:
                    self._store.add_patient_kek(row)
                    done.append((row, kek))
                except KeyStoreError:
                    kek.wipe()
        result = []
        for row, kek in done:
            self._remember(("kek", row.patient_id, row.version), kek).wipe()  # the cache keeps `kek` itself
            result.append((row.patient_id, row.version))
        return result

    def retire_patient_keks(self, items: Iterable[tuple[str, int]]) -> int:
        """Delete old KEK versions (never a patient's newest). The CALLER guarantees that no wrapped DEK in the data
        database names them: the key store cannot see the data. Returns the number deleted."""
        items = list(items)
        for patient_id, version in items:
            self._cache.evict(("kek", patient_id, version))
        return self._store.delete_patient_keks(items)

    # --- rewrap (kms.rewrap) --------------------------------------------------------------------------------------
    def rewrap_kek_batch(self, *, after: tuple[str, int] | None, limit: int) -> RewrapBatch:
        """Move up to `limit` KEK rows wrapped by an old root version to the current one (compare-and-swap)."""
        return rewrap.rewrap_kek_batch(self._provider, self._store, after=after, limit=limit)

    def rewrap_service_keys(self) -> RewrapBatch:
        """Move every service key wrapped by an old root version to the current one."""
        return rewrap.rewrap_service_keys(self._provider, self._store)

    def dek_rewrapper(self) -> DekRewrapper:
        """A batch helper that re-wraps DEKs under their patient's newest KEK; use as a context manager."""
        return DekRewrapper(newest_versions=self._store.newest_kek_versions, open_kek=self._kek_version)
