"""The facade vault uses: patient KEKs, record DEKs and single-purpose service keys, and their rotation.

Owns: the middle of the key hierarchy (root -> patient KEK -> DEK), the DEK wrap formats, the AAD that binds every
wrapped key to its owner, version and suite, caching of unwrapped keys, crypto-shredding, and the key-store side of
rotation: new root and KEK versions, re-wrapping KEKs and service keys under the newest root, re-wrapping DEKs under
a patient's newest KEK (the caller brings the DEKs: they live in the data database), and retiring versions nothing
references any more.
Never: stores or returns an unwrapped KEK, lets a DEK wrapped for one patient open as another's, derives one service
key from another (each purpose has its own random key, so exposing one never exposes the rest), reports why an
unwrap failed (CryptoError, or KeyDestroyed when the patient was erased), re-encrypts data (a rotation changes only
wrapped keys; field and file ciphertexts keep their DEK), or retires a root version a wrapped key still names.

The suite given to KeyManager (`suite=`, a kms.suites id) is the suite of every NEW KEK and DEK. A DEK is wrapped
with its KEK's own cipher, so after switching suites, `rotate_patient_key` (CLI: `keys rotate --all-keks`) then a
rewrap move the wrapping over too; old wraps keep opening because every wrap names its versions and suites.

Wrapped DEK, format 2 (written by every new wrap; integers big-endian):

    offset  size  field
    0       1     format        u8, = 2
    1       4     kek_version   u32
    5       1     dek_suite     u8, kms.suites id of the wrapped DEK (1 = AES-256-GCM, 2 = SM4-GCM)
    6       16    key_id        the DEK's id (also written in every ciphertext header it produces)
    22      12    nonce
    34      n+16  AEAD(KEK, nonce, DEK (n = key_size(dek_suite): 32 for AES-256, 16 for SM4), AAD) || tag (16)
    total 82 bytes for an AES-256 DEK, 66 for an SM4 DEK; the length is checked against dek_suite before slicing.
    AEAD = the KEK's suite (the `suite` column of its key-store row).
    AAD = b"hv/dek-wrap/v2\\0" || patient_id (UTF-8) || u32 kek_version || u8 dek_suite || key_id (16)

Wrapped DEK, format 1 (still read; an AES-256 DEK under an AES-256 KEK), 81 bytes:

    0 format u8 = 1 | 1 kek_version u32 | 5 key_id 16 | 21 nonce 12 | 33 AES-256-GCM(KEK, nonce, DEK (32), AAD) 48
    AAD = b"hv/dek-wrap/v1\\0" || patient_id (UTF-8) || u32 kek_version || key_id (16)

(patient_id is the only variable-length part and everything after it is fixed-size, so each AAD is unambiguous.)

Root wraps (through the provider, which adds its own domain tag and root version):
    AES-256 KEK:  AAD = b"hv/kek/v1\\0" || u32 kek_version || patient_id (UTF-8)
    other KEKs:   AAD = b"hv/kek/v2\\0" || u8 suite || u32 kek_version || patient_id (UTF-8)
                  (so a key-store row whose suite column was edited does not unwrap)
    service key:  AAD = b"hv/svc/v1\\0" || u32 version || purpose (UTF-8)

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
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from cryptography.exceptions import InvalidTag

from kms import suites
from kms.cache import KeyCache
from kms.errors import CryptoError, KeyDestroyed, KeyStoreError
from kms.keys import KEY_ID_SIZE, DataKey
from kms.keystore import TOMBSTONE_VERSION, KeyStore, PatientKek, ServiceKey
from kms.provider import RootKeyProvider
from kms.suites import AES_256_GCM, KEY_SIZE, NONCE_SIZE, TAG_SIZE

WRAP_FORMAT_V1 = 1
WRAP_FORMAT = 2  # what new wraps are written in
_WRAP_HEAD_V1 = struct.Struct(">BI16s12s")  # 33 bytes
_WRAP_HEAD = struct.Struct(">BIB16s12s")  # 34 bytes
WRAPPED_SIZE_V1 = _WRAP_HEAD_V1.size + KEY_SIZE + TAG_SIZE  # 81
WRAPPED_SIZE = _WRAP_HEAD.size + KEY_SIZE + TAG_SIZE  # 82: format 2 around an AES-256 DEK
_DEK_DOMAIN_V1 = b"hv/dek-wrap/v1\0"
_DEK_DOMAIN = b"hv/dek-wrap/v2\0"
_KEK_DOMAIN = b"hv/kek/v1\0"
_KEK_DOMAIN_V2 = b"hv/kek/v2\0"
_SVC_DOMAIN = b"hv/svc/v1\0"
_MAX_ID = 64
_CRYPTO_FAILURES = (InvalidTag, CryptoError, ValueError, TypeError)


class _Wrap(NamedTuple):
    format: int
    kek_version: int
    suite: int
    key_id: bytes
    nonce: bytes
    sealed: bytes


def _parse(blob) -> _Wrap:
    """Split a wrapped DEK; CryptoError unless it is well-formed for its format and suite (lengths first)."""
    if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) < 1:
        raise CryptoError()
    fmt = blob[0]
    if fmt == WRAP_FORMAT:
        if len(blob) < _WRAP_HEAD.size + TAG_SIZE:
            raise CryptoError()
        _, kek_version, suite, key_id, nonce = _WRAP_HEAD.unpack_from(blob, 0)
        if not suites.is_supported(suite):
            raise CryptoError()
        if len(blob) != _WRAP_HEAD.size + suites.key_size(suite) + TAG_SIZE:
            raise CryptoError()
        return _Wrap(fmt, kek_version, suite, key_id, nonce, bytes(blob[_WRAP_HEAD.size:]))
    if fmt == WRAP_FORMAT_V1:
        if len(blob) != WRAPPED_SIZE_V1:
            raise CryptoError()
        _, kek_version, key_id, nonce = _WRAP_HEAD_V1.unpack_from(blob, 0)
        return _Wrap(fmt, kek_version, AES_256_GCM, key_id, nonce, bytes(blob[_WRAP_HEAD_V1.size:]))
    raise CryptoError()


@dataclasses.dataclass(frozen=True)
class WrappedKey:
    """A DEK wrapped under a patient KEK; self-describing (carries the KEK version, the DEK's suite and id)."""

    blob: bytes

    def parts(self) -> tuple[int, bytes, bytes, bytes]:
        """(kek_version, key_id, nonce, sealed); CryptoError if the blob is not a well-formed wrapped key."""
        parsed = _parse(self.blob)
        return parsed.kek_version, parsed.key_id, parsed.nonce, parsed.sealed

    @property
    def format(self) -> int:
        return _parse(self.blob).format

    @property
    def kek_version(self) -> int:
        return _parse(self.blob).kek_version

    @property
    def suite(self) -> int:
        return _parse(self.blob).suite

    @property
    def key_id(self) -> bytes:
        return _parse(self.blob).key_id


def wrapped_kek_version(blob) -> int:
    """The KEK version a wrapped DEK names (CryptoError if malformed): what status counts and rewrap compares."""
    return _parse(blob).kek_version


@dataclasses.dataclass(frozen=True)
class KeyEvent:
    """Something key-related happened inside another flow. Ids and counts only: never key bytes or plaintext."""

    action: str  # "key.shred" | "key.unwrap_failed" (audit vocabulary)
    kind: str  # "kek" | "dek" | "service"
    patient_id: str | None = None
    name: str | None = None  # a service-key purpose
    count: int | None = None
    detail: str | None = None  # short code: "destroyed", "integrity"


@dataclasses.dataclass
class RewrapBatch:
    """What one rewrap batch did: keys looked at, moved, failed to open; `last` is the cursor to resume after."""

    scanned: int = 0
    rewrapped: int = 0
    failed: int = 0
    last: object = None
    failures: list = dataclasses.field(default_factory=list)


def _check_name(value: str, what: str) -> bytes:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_ID or "\0" in value:
        raise ValueError(f"{what} must be a non-empty string of at most {_MAX_ID} characters without NUL")
    return value.encode("utf-8")


def _dek_aad(patient: bytes, kek_version: int, suite: int, key_id: bytes) -> bytes:
    return _DEK_DOMAIN + patient + struct.pack(">IB", kek_version, suite) + key_id


def _dek_aad_v1(patient: bytes, kek_version: int, key_id: bytes) -> bytes:
    return _DEK_DOMAIN_V1 + patient + struct.pack(">I", kek_version) + key_id


def _kek_aad(patient: bytes, version: int, suite: int = AES_256_GCM) -> bytes:
    if suite == AES_256_GCM:
        return _KEK_DOMAIN + struct.pack(">I", version) + patient
    return _KEK_DOMAIN_V2 + struct.pack(">BI", suite, version) + patient


def _svc_aad(purpose: bytes, version: int) -> bytes:
    return _SVC_DOMAIN + struct.pack(">I", version) + purpose


def _label_id(domain: bytes, name: bytes) -> bytes:
    """A stable, non-secret 16-byte id for a KEK or service key, so they fit the DataKey shape in the cache."""
    return hashlib.sha256(domain + name).digest()[:KEY_ID_SIZE]


def _key(material, *, key_id: bytes, version: int, suite: int) -> DataKey:
    """A DataKey from unwrapped bytes; any shape problem is the one opaque CryptoError."""
    try:
        if len(material) != suites.key_size(suite):
            raise CryptoError()
        return DataKey(material, key_id=key_id, version=version, suite=suite)
    except (ValueError, TypeError):
        raise CryptoError() from None


def _zero(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))


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
            except Exception:  # noqa: BLE001 - a listener must never change what a key operation returns
                pass

    # --- helpers --------------------------------------------------------------------------------------------------
    def _utcnow(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)

    def utcnow(self) -> dt.datetime:
        """This manager's clock: what it writes into key-store `created_at` columns."""
        return self._utcnow()

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
        suite = row.suite or AES_256_GCM
        material = bytearray(self._provider.unwrap(row.root_version, row.wrapped,
                                                   _kek_aad(patient, row.version, suite)))
        try:
            kek = _key(material, key_id=_label_id(b"hv/kek-id\0", patient), version=row.version, suite=suite)
        finally:
            _zero(material)
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
            root_version, wrapped = self._provider.wrap(bytes(material), _kek_aad(patient, version, self._suite))
            kek = _key(material, key_id=_label_id(b"hv/kek-id\0", patient), version=version, suite=self._suite)
        finally:
            _zero(material)
        row = PatientKek(patient_id=patient_id, version=version, root_version=root_version, wrapped=wrapped,
                         created_at=self._utcnow(), destroyed_at=None, suite=self._suite)
        return row, kek

    def _wrap_dek(self, patient: bytes, kek: DataKey, material: bytes, key_id: bytes, dek_suite: int) -> bytes:
        aead = kek._cipher()
        if aead is None:
            raise CryptoError()
        nonce = os.urandom(NONCE_SIZE)
        sealed = aead.encrypt(nonce, bytes(material), _dek_aad(patient, kek.version, dek_suite, key_id))
        return _WRAP_HEAD.pack(WRAP_FORMAT, kek.version, dek_suite, key_id, nonce) + sealed

    @staticmethod
    def _unwrap_dek(patient: bytes, kek: DataKey, parsed: _Wrap) -> bytes:
        aead = kek._cipher()
        if aead is None:
            raise CryptoError()
        if parsed.format == WRAP_FORMAT_V1:
            aad = _dek_aad_v1(patient, parsed.kek_version, parsed.key_id)
        else:
            aad = _dek_aad(patient, parsed.kek_version, parsed.suite, parsed.key_id)
        try:
            material = aead.decrypt(parsed.nonce, parsed.sealed, aad)
        except _CRYPTO_FAILURES:
            raise CryptoError() from None
        if len(material) != suites.key_size(parsed.suite):
            raise CryptoError()
        return material

    # --- patient keys ---------------------------------------------------------------------------------------------
    def create_patient_key(self, patient_id: str) -> int:
        patient = _check_name(patient_id, "patient_id")
        rows = self._store.patient_keks(patient_id)
        if any(r.version == TOMBSTONE_VERSION for r in rows):
            raise KeyStoreError("this patient's keys were destroyed; an erased patient id cannot be reused")
        if rows:
            raise KeyStoreError("this patient already has a key")
        version = 1
        row, kek = self._new_kek_row(patient_id, patient, version)
        self._store.add_patient_kek(row)
        self._remember(("kek", patient_id, version), kek)
        return version

    def patient_key_exists(self, patient_id: str) -> bool:
        _check_name(patient_id, "patient_id")
        return any(r.version != TOMBSTONE_VERSION for r in self._store.patient_keks(patient_id))

    def new_data_key(self, patient_id: str) -> tuple[DataKey, bytes]:
        """A fresh DEK (in this manager's suite) and its format-2 wrap under the patient's newest KEK.

        Reads the key store every time (new records are rarer than reads), so a patient erased by another process
        never gets new data wrapped under a stale cached KEK, and a KEK rotated by another process is used at once.
        """
        patient = _check_name(patient_id, "patient_id")
        self._raise_if_destroyed_here(patient_id)
        rows = self._store.patient_keks(patient_id)
        if any(r.version == TOMBSTONE_VERSION for r in rows):
            raise KeyDestroyed()
        if not rows:
            raise KeyStoreError("no key for this patient: create_patient_key() first")
        try:
            kek = self._kek(patient_id, patient, rows[0])
        except CryptoError:
            self._emit(KeyEvent("key.unwrap_failed", "kek", patient_id=patient_id, detail="integrity"))
            raise
        material = bytearray(os.urandom(suites.key_size(self._suite)))
        try:
            dek = DataKey(material, key_id=os.urandom(KEY_ID_SIZE), version=1, suite=self._suite)
            blob = self._wrap_dek(patient, kek, material, dek.key_id, self._suite)
        finally:
            kek.wipe()
            _zero(material)
        return self._remember(("dek", patient_id, blob), dek), blob

    def open_data_key(self, patient_id: str, wrapped: bytes | WrappedKey) -> DataKey:
        patient = _check_name(patient_id, "patient_id")
        blob = bytes(wrapped.blob if isinstance(wrapped, WrappedKey) else wrapped)
        cache_key = ("dek", patient_id, blob)
        try:
            self._raise_if_destroyed_here(patient_id)
            cached = self._cached(cache_key)
            if cached is not None:
                return cached
            parsed = _parse(blob)
            kek = self._kek_version(patient_id, patient, parsed.kek_version)
            try:
                material = self._unwrap_dek(patient, kek, parsed)
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
        _check_name(patient_id, "patient_id")
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
        try:
            material = bytearray(self._provider.unwrap(row.root_version, row.wrapped, _svc_aad(name, row.version)))
            try:
                key = _key(material, key_id=_label_id(b"hv/svc-id\0", name), version=row.version, suite=AES_256_GCM)
            finally:
                _zero(material)
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

    def _provider_call(self, name: str, *args):
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
        return int(self._provider_call("add_version"))

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
            patient = _check_name(patient_id, "patient_id")
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

    # --- rewrap ---------------------------------------------------------------------------------------------------
    def rewrap_kek_batch(self, *, after: tuple[str, int] | None, limit: int) -> RewrapBatch:
        """Move up to `limit` KEK rows wrapped by an old root version to the current one (compare-and-swap)."""
        current = self._provider.current_version()
        rows = self._store.keks_under_old_root(current, after=after, limit=limit)
        batch = RewrapBatch(scanned=len(rows))
        changes = []
        for row in rows:
            batch.last = (row.patient_id, row.version)
            patient = row.patient_id.encode("utf-8")
            moved = self._rewrap_under_current_root(row.root_version, row.wrapped,
                                                    _kek_aad(patient, row.version, row.suite or AES_256_GCM))
            if moved is None:
                batch.failed += 1
                batch.failures.append(row.patient_id)
                continue
            changes.append((row.patient_id, row.version, row.root_version, *moved))
        if changes:
            batch.rewrapped = self._store.update_kek_wraps(changes)
        return batch

    def _rewrap_under_current_root(self, root_version: int, wrapped: bytes,
                                   aad: bytes) -> tuple[int, bytes] | None:
        """(new root version, new wrap) of a root-wrapped key, the plaintext zeroed at once; None if it did not open."""
        try:
            material = bytearray(self._provider.unwrap(root_version, wrapped, aad))
        except CryptoError:
            return None
        try:
            return self._provider.wrap(bytes(material), aad)
        finally:
            _zero(material)

    def rewrap_service_keys(self) -> RewrapBatch:
        """Move every service key wrapped by an old root version to the current one."""
        rows = self._store.service_keys_under_old_root(self._provider.current_version())
        batch = RewrapBatch(scanned=len(rows))
        for row in rows:
            moved = self._rewrap_under_current_root(row.root_version, row.wrapped,
                                                    _svc_aad(row.purpose.encode("utf-8"), row.version))
            if moved is None:
                batch.failed += 1
                batch.failures.append(row.purpose)
                continue
            if self._store.update_service_key_wrap(row.purpose, row.version, row.root_version, *moved):
                batch.rewrapped += 1
        return batch

    def dek_rewrapper(self) -> DekRewrapper:
        """A batch helper that re-wraps DEKs under their patient's newest KEK; use as a context manager."""
        return DekRewrapper(self)


class DekRewrapper:
    """Re-wraps DEKs of one batch under each patient's newest KEK, holding the KEKs it unwrapped until close().

    The DEK itself (bytes, id, suite) is unchanged, so every ciphertext it sealed keeps opening; only the wrap moves.
    """

    def __init__(self, manager: KeyManager) -> None:
        self._m = manager
        self._newest: dict[str, int] = {}
        self._keks: dict[tuple[str, int], DataKey] = {}

    def __enter__(self) -> DekRewrapper:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def load(self, patient_ids: Iterable[str]) -> None:
        """Read the newest KEK version of these patients in one query (call once per batch)."""
        missing = [p for p in dict.fromkeys(patient_ids) if p not in self._newest]
        if missing:
            self._newest.update(self._m._store.newest_kek_versions(missing))

    def _kek(self, patient_id: str, patient: bytes, version: int) -> DataKey:
        key = self._keks.get((patient_id, version))
        if key is None:
            key = self._keks[(patient_id, version)] = self._m._kek_version(patient_id, patient, version)
        return key

    def needs_rewrap(self, patient_id: str, blob) -> bool:
        """True if the wrap names an older KEK version than the patient's newest (CryptoError if malformed)."""
        self.load([patient_id])
        top = self._newest.get(patient_id)
        if top is None:
            raise CryptoError()
        if top == TOMBSTONE_VERSION:
            raise KeyDestroyed()
        return _parse(blob).kek_version != top

    def rewrap(self, patient_id: str, blob) -> bytes | None:
        """The DEK re-wrapped (format 2) under the patient's newest KEK, or None if it already is.

        CryptoError when the wrap does not open (damaged, or names a KEK version that is gone), KeyDestroyed for an
        erased patient."""
        patient = _check_name(patient_id, "patient_id")
        if not self.needs_rewrap(patient_id, blob):
            return None
        parsed = _parse(blob)
        top = self._newest[patient_id]
        if parsed.kek_version > top:
            raise CryptoError()
        old = self._kek(patient_id, patient, parsed.kek_version)
        new = self._kek(patient_id, patient, top)
        material = bytearray(self._m._unwrap_dek(patient, old, parsed))
        try:
            return self._m._wrap_dek(patient, new, material, parsed.key_id, parsed.suite)
        finally:
            _zero(material)

    def close(self) -> None:
        for key in self._keks.values():
            key.wipe()
        self._keks.clear()
        self._newest.clear()
