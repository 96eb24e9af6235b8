"""The facade vault uses: patient KEKs, record DEKs and single-purpose service keys.

Owns: the middle of the key hierarchy (root -> patient KEK -> DEK), the DEK wrap format, the AAD that binds every
wrapped key to its owner and version, caching of unwrapped keys, and crypto-shredding.
Never: stores or returns an unwrapped KEK, lets a DEK wrapped for one patient open as another's, derives one service
key from another (each purpose has its own random key, so exposing one never exposes the rest), or reports why an
unwrap failed (CryptoError, or KeyDestroyed when the patient was erased).

Wrapped DEK (`WrappedKey.blob`, 81 bytes, integers big-endian):

    offset  size  field
    0       1     format        u8, = 1
    1       4     kek_version   u32
    5       16    key_id        the DEK's id (also written in every ciphertext header it produces)
    21      12    nonce
    33      48    AES-256-GCM(KEK, nonce, DEK (32), AAD) ciphertext (32) || tag (16)
    AAD = b"hv/dek-wrap/v1\\0" || patient_id (UTF-8) || u32 kek_version || key_id (16)
    (patient_id is the only variable-length part and everything after it is fixed-size, so the AAD is unambiguous)

Root wraps (through the provider, which adds its own domain tag and root version):
    KEK:         AAD = b"hv/kek/v1\\0" || u32 kek_version || patient_id (UTF-8)
    service key: AAD = b"hv/svc/v1\\0" || u32 version || purpose (UTF-8)

Destroyed patients: KeyStore leaves a tombstone, so KeyDestroyed survives restarts. Within this process, destruction
also evicts cached keys at once; other processes drop theirs within the cache's max_age (a known window).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from kms.cache import KeyCache
from kms.errors import CryptoError, KeyDestroyed, KeyStoreError
from kms.keys import KEY_ID_SIZE, DataKey
from kms.keystore import TOMBSTONE_VERSION, KeyStore, PatientKek, ServiceKey
from kms.provider import RootKeyProvider
from kms.suites import AES_256_GCM, KEY_SIZE, NONCE_SIZE, TAG_SIZE

WRAP_FORMAT = 1
_WRAP_HEAD = struct.Struct(">BI16s12s")
WRAPPED_SIZE = _WRAP_HEAD.size + KEY_SIZE + TAG_SIZE  # 81
_DEK_DOMAIN = b"hv/dek-wrap/v1\0"
_KEK_DOMAIN = b"hv/kek/v1\0"
_SVC_DOMAIN = b"hv/svc/v1\0"
_MAX_ID = 64


@dataclass(frozen=True)
class WrappedKey:
    """A DEK wrapped under a patient KEK; self-describing (carries the KEK version and the DEK's id)."""

    blob: bytes

    def parts(self) -> tuple[int, bytes, bytes, bytes]:
        """(kek_version, key_id, nonce, sealed); CryptoError if the blob is not a well-formed wrapped key."""
        blob = self.blob
        if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) != WRAPPED_SIZE:
            raise CryptoError()
        fmt, kek_version, key_id, nonce = _WRAP_HEAD.unpack_from(blob, 0)
        if fmt != WRAP_FORMAT:
            raise CryptoError()
        return kek_version, key_id, nonce, bytes(blob[_WRAP_HEAD.size:])

    @property
    def kek_version(self) -> int:
        return self.parts()[0]

    @property
    def key_id(self) -> bytes:
        return self.parts()[1]


def _check_name(value: str, what: str) -> bytes:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_ID or "\0" in value:
        raise ValueError(f"{what} must be a non-empty string of at most {_MAX_ID} characters without NUL")
    return value.encode("utf-8")


def _dek_aad(patient: bytes, kek_version: int, key_id: bytes) -> bytes:
    return _DEK_DOMAIN + patient + struct.pack(">I", kek_version) + key_id


def _kek_aad(patient: bytes, version: int) -> bytes:
    return _KEK_DOMAIN + struct.pack(">I", version) + patient


def _svc_aad(purpose: bytes, version: int) -> bytes:
    return _SVC_DOMAIN + struct.pack(">I", version) + purpose


def _label_id(domain: bytes, name: bytes) -> bytes:
    """A stable, non-secret 16-byte id for a KEK or service key, so they fit the DataKey shape in the cache."""
    return hashlib.sha256(domain + name).digest()[:KEY_ID_SIZE]


class KeyManager:
    def __init__(self, provider: RootKeyProvider, store: KeyStore, *, cache: KeyCache | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._provider = provider
        self._store = store
        self._cache = cache if cache is not None else KeyCache()
        self._clock = clock
        self._destroyed: set[str] = set()  # erased in this process: refuse even a key another thread re-cached
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KeyManager(provider={getattr(self._provider, 'name', '?')!r}, store={self._store!r})"

    # --- helpers --------------------------------------------------------------------------------------------------
    def _utcnow(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), tz=dt.timezone.utc)

    def _cached(self, cache_key) -> DataKey | None:
        """A private clone of a cached key, or None (also when an eviction wiped it between get and clone)."""
        key = self._cache.get(cache_key, now=self._clock())
        if key is None:
            return None
        try:
            return key._clone()
        except ValueError:
            return None

    def _remember(self, cache_key, key: DataKey) -> DataKey:
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
        material = self._provider.unwrap(row.root_version, row.wrapped, _kek_aad(patient, row.version))
        if len(material) != KEY_SIZE:
            raise CryptoError()
        kek = DataKey(material, key_id=_label_id(b"hv/kek-id\0", patient), version=row.version, suite=AES_256_GCM)
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

    # --- patient keys ---------------------------------------------------------------------------------------------
    def create_patient_key(self, patient_id: str) -> int:
        patient = _check_name(patient_id, "patient_id")
        rows = self._store.patient_keks(patient_id)
        if any(r.version == TOMBSTONE_VERSION for r in rows):
            raise KeyStoreError("this patient's keys were destroyed; an erased patient id cannot be reused")
        if rows:
            raise KeyStoreError("this patient already has a key")
        version = 1
        material = os.urandom(KEY_SIZE)
        root_version, wrapped = self._provider.wrap(material, _kek_aad(patient, version))
        self._store.add_patient_kek(PatientKek(patient_id=patient_id, version=version, root_version=root_version,
                                               wrapped=wrapped, created_at=self._utcnow(), destroyed_at=None))
        kek = DataKey(material, key_id=_label_id(b"hv/kek-id\0", patient), version=version, suite=AES_256_GCM)
        self._remember(("kek", patient_id, version), kek)
        return version

    def patient_key_exists(self, patient_id: str) -> bool:
        _check_name(patient_id, "patient_id")
        return any(r.version != TOMBSTONE_VERSION for r in self._store.patient_keks(patient_id))

    def new_data_key(self, patient_id: str) -> tuple[DataKey, bytes]:
        """A fresh DEK and its wrapped form under the patient's newest KEK.

        Reads the key store every time (new records are rarer than reads), so a patient erased by another process
        never gets new data wrapped under a stale cached KEK.
        """
        patient = _check_name(patient_id, "patient_id")
        self._raise_if_destroyed_here(patient_id)
        rows = self._store.patient_keks(patient_id)
        if any(r.version == TOMBSTONE_VERSION for r in rows):
            raise KeyDestroyed()
        if not rows:
            raise KeyStoreError("no key for this patient: create_patient_key() first")
        kek = self._kek(patient_id, patient, rows[0])
        try:
            dek = DataKey.generate()
            nonce = os.urandom(NONCE_SIZE)
            sealed = kek._cipher().encrypt(nonce, dek.material(), _dek_aad(patient, kek.version, dek.key_id))
        finally:
            kek.wipe()
        blob = _WRAP_HEAD.pack(WRAP_FORMAT, kek.version, dek.key_id, nonce) + sealed
        return self._remember(("dek", patient_id, blob), dek), blob

    def open_data_key(self, patient_id: str, wrapped: bytes | WrappedKey) -> DataKey:
        patient = _check_name(patient_id, "patient_id")
        self._raise_if_destroyed_here(patient_id)
        blob = bytes(wrapped.blob if isinstance(wrapped, WrappedKey) else wrapped)
        cache_key = ("dek", patient_id, blob)
        cached = self._cached(cache_key)
        if cached is not None:
            return cached
        kek_version, key_id, nonce, sealed = WrappedKey(blob).parts()
        kek = self._kek_version(patient_id, patient, kek_version)
        try:
            material = kek._cipher().decrypt(nonce, sealed, _dek_aad(patient, kek_version, key_id))
        except InvalidTag:
            raise CryptoError() from None
        finally:
            kek.wipe()
        dek = self._remember(cache_key, DataKey(material, key_id=key_id, version=1, suite=AES_256_GCM))
        if patient_id in self._destroyed:  # erased while we were unwrapping
            self._cache.evict(cache_key)
            dek.wipe()
            raise KeyDestroyed()
        return dek

    def destroy_patient_keys(self, patient_id: str) -> int:
        """Crypto-shred: every record of the patient becomes unreadable, in backups too (keys live apart from data)."""
        _check_name(patient_id, "patient_id")
        with self._lock:
            self._destroyed.add(patient_id)
        count = self._store.destroy_patient(patient_id, now=self._utcnow())
        self._cache.evict_where(lambda k: isinstance(k, tuple) and len(k) == 3 and k[0] in ("kek", "dek")
                                and k[1] == patient_id)
        return count

    # --- service keys ---------------------------------------------------------------------------------------------
    def service_key(self, purpose: str) -> bytes:
        """The newest 32-byte key for one purpose, created (random, root-wrapped) on first use."""
        name = _check_name(purpose, "purpose")
        cache_key = ("svc", purpose)
        cached = self._cached(cache_key)
        if cached is not None:
            return cached.material()
        row = self._store.newest_service_key(purpose)
        if row is None:
            material = os.urandom(KEY_SIZE)
            root_version, wrapped = self._provider.wrap(material, _svc_aad(name, 1))
            row = ServiceKey(purpose=purpose, version=1, root_version=root_version, wrapped=wrapped,
                             created_at=self._utcnow())
            if not self._store.add_service_key(row):  # another process created it first: use theirs
                row = self._store.newest_service_key(purpose)
                if row is None:
                    raise KeyStoreError("service key could not be created or read")
        material = self._provider.unwrap(row.root_version, row.wrapped, _svc_aad(name, row.version))
        if len(material) != KEY_SIZE:
            raise CryptoError()
        key = DataKey(material, key_id=_label_id(b"hv/svc-id\0", name), version=row.version, suite=AES_256_GCM)
        return self._remember(cache_key, key).material()
