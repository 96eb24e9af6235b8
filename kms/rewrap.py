"""Re-wrapping keys after a rotation: root-wrapped keys under the newest root version, DEKs under the newest KEK.

Owns: moving KEK rows and service keys wrapped by an old root version to the current one (compare-and-swap in the
key store, in batches with a resume cursor), and `DekRewrapper`, which re-wraps the DEKs a caller brings (they live
in the data database) under each patient's newest KEK.
Never: re-encrypts data (the DEK itself, its id and suite are unchanged, so every ciphertext it sealed keeps
opening), keeps unwrapped key bytes longer than one re-wrap (KEKs held by a DekRewrapper are wiped by close()), or
says why a key did not open (it is counted as failed and named by id only). KeyManager's `rewrap_*` and
`dek_rewrapper` methods are the entry points; who asked is audited by their caller.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from kms.errors import CryptoError, KeyDestroyed
from kms.keys import DataKey
from kms.keystore import KeyStore
from kms.keystore_tables import TOMBSTONE_VERSION
from kms.provider import RootKeyProvider
from kms.suites import AES_256_GCM
from kms.wrapping import encode_name, kek_aad, parse, svc_aad, unwrap_dek, wrap_dek, zero


@dataclasses.dataclass
class RewrapBatch:
    """What one rewrap batch did: keys looked at, moved, failed to open; `last` is the cursor to resume after."""

    scanned: int = 0
    rewrapped: int = 0
    failed: int = 0
    last: object = None
    failures: list[Any] = dataclasses.field(default_factory=list)  # ids: patient ids, purposes, or (row id, patient id)


def _under_current_root(provider: RootKeyProvider, root_version: int, wrapped: bytes,
                        aad: bytes) -> tuple[int, bytes] | None:
    """(new root version, new wrap) of a root-wrapped key, the plaintext zeroed at once; None if it did not open."""
    try:
        material = bytearray(provider.unwrap(root_version, wrapped, aad))
    except CryptoError:
        return None
    try:
        return provider.wrap(bytes(material), aad)
    finally:
        zero(material)


def rewrap_kek_batch(provider: RootKeyProvider, store: KeyStore, *, after: tuple[str, int] | None,
                     limit: int) -> RewrapBatch:
    """Move up to `limit` KEK rows wrapped by an old root version to the current one (compare-and-swap)."""
    current = provider.current_version()
    rows = store.keks_under_old_root(current, after=after, limit=limit)
    batch = RewrapBatch(scanned=len(rows))
    changes: list[tuple[str, int, int, int, bytes]] = []
    for row in rows:
        batch.last = (row.patient_id, row.version)
        patient = row.patient_id.encode("utf-8")
        moved = _under_current_root(provider, row.root_version, row.wrapped,
                                    kek_aad(patient, row.version, row.suite or AES_256_GCM))
        if moved is None:
            batch.failed += 1
            batch.failures.append(row.patient_id)
            continue
        changes.append((row.patient_id, row.version, row.root_version, *moved))
    if changes:
        batch.rewrapped = store.update_kek_wraps(changes)
    return batch


def rewrap_service_keys(provider: RootKeyProvider, store: KeyStore) -> RewrapBatch:
    """Move every service key wrapped by an old root version to the current one."""
    rows = store.service_keys_under_old_root(provider.current_version())
    batch = RewrapBatch(scanned=len(rows))
    for row in rows:
        moved = _under_current_root(provider, row.root_version, row.wrapped,
                                    svc_aad(row.purpose.encode("utf-8"), row.version))
        if moved is None:
            batch.failed += 1
            batch.failures.append(row.purpose)
            continue
        if store.update_service_key_wrap(row.purpose, row.version, row.root_version, *moved):
            batch.rewrapped += 1
    return batch


class DekRewrapper:
    """Re-wraps DEKs of one batch under each patient's newest KEK, holding the KEKs it unwrapped until close().

    The DEK itself (bytes, id, suite) is unchanged, so every ciphertext it sealed keeps opening; only the wrap moves.
    Built by KeyManager.dek_rewrapper(), which hands it the key store's newest-version query and its own KEK opener
    (`open_kek(patient_id, patient_bytes, version)`, KeyDestroyed / CryptoError when that version is gone).
    """

    def __init__(self, *, newest_versions: Callable[[list[str]], dict[str, int]],
                 open_kek: Callable[[str, bytes, int], DataKey]) -> None:
        self._newest_versions = newest_versions
        self._open_kek = open_kek
        self._newest: dict[str, int] = {}
        self._keks: dict[tuple[str, int], DataKey] = {}

    def __enter__(self) -> DekRewrapper:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def load(self, patient_ids: Iterable[str]) -> None:
        """Read the newest KEK version of these patients in one query (call once per batch)."""
        missing = [p for p in dict.fromkeys(patient_ids) if p not in self._newest]
        if missing:
            self._newest.update(self._newest_versions(missing))

    def _kek(self, patient_id: str, patient: bytes, version: int) -> DataKey:
        key = self._keks.get((patient_id, version))
        if key is None:
            key = self._keks[(patient_id, version)] = self._open_kek(patient_id, patient, version)
        return key

    def needs_rewrap(self, patient_id: str, blob: bytes) -> bool:
        """True if the wrap names an older KEK version than the patient's newest (CryptoError if malformed)."""
        self.load([patient_id])
        top = self._newest.get(patient_id)
        if top is None:
            raise CryptoError()
        if top == TOMBSTONE_VERSION:
            raise KeyDestroyed()
        return parse(blob).kek_version != top

    def rewrap(self, patient_id: str, blob: bytes) -> bytes | None:
        """The DEK re-wrapped (format 2) under the patient's newest KEK, or None if it already is.

        CryptoError when the wrap does not open (damaged, or names a KEK version that is gone), KeyDestroyed for an
        erased patient."""
        patient = encode_name(patient_id, "patient_id")
        if not self.needs_rewrap(patient_id, blob):
            return None
        parsed = parse(blob)
        top = self._newest[patient_id]
        if parsed.kek_version > top:
            raise CryptoError()
        old = self._kek(patient_id, patient, parsed.kek_version)
        new = self._kek(patient_id, patient, top)
        material = bytearray(unwrap_dek(patient, old, parsed))
        try:
            return wrap_dek(patient, new, material, parsed.key_id, parsed.suite)
        finally:
            zero(material)

    def close(self) -> None:
        for key in self._keks.values():
            key.wipe()
        self._keks.clear()
        self._newest.clear()
