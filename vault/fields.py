"""Field encryption bound to its place: table, column, row and patient; and the suite choice for keyed lookups.

Owns the mapping from a column value to a kms field ciphertext. The associated data makes a ciphertext copied into any
other row, column or patient fail to decrypt. A decryption failure surfaces as IntegrityFailure and never reveals why.
The cipher of a new ciphertext is the DEK's suite (KeyManager makes DEKs in the configured crypto_suite); reading
follows each ciphertext's own header, so AES and SM4 data decrypt side by side.

Blind indexes (`blind_index`, `blind_index_candidates`): a new index is computed in the configured suite (HMAC-SHA-256
or HMAC-SM3, each under its own service key, kms.suites.purpose). A lookup must also find rows indexed before a suite
switch, so it computes the value's index under every suite this vault has an index key for: the configured suite's
always, another suite's only if its key exists in the key store (so a vault that was always "sm" never computes an
HMAC-SHA-256). Keys never disappear, so a suite once seen is remembered for the life of the process; "not there" is
re-checked after NEGATIVE_TTL seconds (a fleet switching suite by rolling restart sees the new suite's keys soon).
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING

from kms import CryptoError, DataKey, envelope, suites
from kms import blind_index as _blind_index
from vault.errors import IntegrityFailure

if TYPE_CHECKING:
    from vault.runtime import Vault


def seal(key: DataKey, value: str | bytes, *, table: str, column: str, row_id: str, patient_id: str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    aad = envelope.field_aad(table=table, column=column, row_id=row_id, patient_id=patient_id)
    return envelope.encrypt(key, data, aad)


def open_bytes(key: DataKey, blob: bytes, *, table: str, column: str, row_id: str, patient_id: str) -> bytes:
    aad = envelope.field_aad(table=table, column=column, row_id=row_id, patient_id=patient_id)
    try:
        return envelope.decrypt(key, blob, aad)
    except CryptoError as exc:
        raise IntegrityFailure() from exc


def open_text(key: DataKey, blob: bytes, **where: str) -> str:
    return open_bytes(key, blob, **where).decode()


# ---- suites ---------------------------------------------------------------------------------------------------------

def suite_of(vault: Vault) -> int:
    """The kms suite id of the vault's configured crypto_suite ("aes" -> 1, "sm" -> 2)."""
    return suites.by_name(vault.settings.crypto_suite)


NEGATIVE_TTL = 60.0
# key store -> {purpose: True (exists, for good) or the monotonic time until which "absent" is believed}
_seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_seen_lock = threading.Lock()


def _has_service_key(vault: Vault, purpose: str) -> bool:
    store, now = vault.keystore, time.monotonic()
    with _seen_lock:
        known = _seen.get(store, {}).get(purpose)
    if known is True or (known is not None and now < known):
        return known is True
    exists = store.newest_service_key(purpose) is not None
    with _seen_lock:
        _seen.setdefault(store, {})[purpose] = True if exists else now + NEGATIVE_TTL
    return exists


def keyed_suites(vault: Vault, base_purpose: str) -> list[int]:
    """The configured suite, then every other suite whose key for `base_purpose` exists (data keyed before a suite
    switch)."""
    current = suite_of(vault)
    others = [s for s in sorted(suites.IMPLEMENTED) if s != current
              and _has_service_key(vault, suites.purpose(base_purpose, s))]
    return [current, *others]


def blind_index(vault: Vault, base_purpose: str, *, kind: str, normalized_value: str) -> bytes:
    """The index a new row stores: the configured suite's MAC under that suite's key."""
    suite = suite_of(vault)
    key = vault.keys.service_key(suites.purpose(base_purpose, suite))
    return _blind_index.compute(key, kind=kind, normalized_value=normalized_value, suite=suite)


def blind_index_candidates(vault: Vault, base_purpose: str, *, kind: str, normalized_value: str) -> list[bytes]:
    """Every index the value may be stored under in this vault (the new one first)."""
    return [_blind_index.compute(vault.keys.service_key(suites.purpose(base_purpose, suite)), kind=kind,
                                 normalized_value=normalized_value, suite=suite)
            for suite in keyed_suites(vault, base_purpose)]
