"""Integrity at rest of what authorisation reads from the grant and break-glass tables (COMPLIANCE INT-1).

Owns the MAC that binds a grant's authorisation fields — id, patient, grantee, scope (record ids, categories,
include_future, actions), window (not_before, expires_at) and withdrawal time — and a break-glass claim's (id, doctor,
patient, window) to one keyed tag, stored with the row (`integrity_mac`), and its check where the engine turns rows
into policies. The key is a single-purpose service key (kms `service_key(suites.purpose(PURPOSE, suite))`), not the
patient's KEK: the check costs one HMAC per live source and no unwrap per request.

Tag layout: FORMAT (1 byte) || suite id (1 byte) || MAC (32 bytes), MAC = HMAC-SHA-256 (AES suite) or HMAC-SM3 (SM
suite) over a domain-separated canonical message (length-prefixed fields, times as microseconds since the epoch);
the suite byte picks the key, so tags written before a suite switch still verify. A grant's tag covers `revoked_at`
too: withdrawing re-seals the row, so setting `revoked_at` back to NULL in the database breaks the tag instead of
reviving the grant.
Never: accepts a missing or malformed tag (a row without one is tampered), compares in variable time, asks for a key
of a suite the caller does not vouch for (the key lookup returns None: the tag fails), or raises out of `check`.
Residual: a tag is a function of the row alone, so someone who can write the database and saved a row's earlier
state (fields and tag together) can put that state back; the audit trail (`grant.revoke` events) still shows it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable
from typing import Any, Protocol

from kms import suites

PURPOSE = "authz-integrity"
FORMAT = 1
TAG_SIZE = 34
_GRANT = b"hv/grant-mac/v1\0"
_BREAKGLASS = b"hv/breakglass-mac/v1\0"

KeyLookup = Callable[[int], "bytes | None"]


class GrantFields(Protocol):
    """What a grant's tag covers (a Grant row, the engine's source tuple, or a plain namespace)."""

    @property
    def id(self) -> str: ...
    @property
    def patient_id(self) -> str: ...
    @property
    def grantee_id(self) -> str: ...
    @property
    def record_ids(self) -> Any: ...  # the stored JSON text
    @property
    def categories(self) -> Any: ...
    @property
    def include_future(self) -> Any: ...
    @property
    def actions(self) -> Any: ...
    @property
    def not_before(self) -> dt.datetime: ...
    @property
    def expires_at(self) -> dt.datetime: ...


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def _micros(moment: dt.datetime | None) -> str:
    """Microseconds since the epoch (UTC), or "-"; a naive datetime raises (TypeError)."""
    return "-" if moment is None else str((moment - _EPOCH) // _MICROSECOND)


def _encode(domain: bytes, parts: tuple[str, ...]) -> bytes:
    """Length-prefixed fields: no two different tuples share an encoding, whatever the fields contain."""
    return domain + "".join(f"{len(part)}:{part}" for part in parts).encode()


def grant_message(grant: GrantFields, *, revoked_at: dt.datetime | None) -> bytes:
    """The canonical bytes a grant's tag is computed over (the JSON columns as stored, character for character)."""
    return _encode(_GRANT, (grant.id, grant.patient_id, grant.grantee_id, grant.record_ids, grant.categories,
                            "1" if grant.include_future else "0", grant.actions, _micros(grant.not_before),
                            _micros(grant.expires_at), _micros(revoked_at)))


def breakglass_message(*, claim_id: str, doctor_id: str, patient_id: str, created_at: dt.datetime,
                       expires_at: dt.datetime) -> bytes:
    return _encode(_BREAKGLASS, (claim_id, doctor_id, patient_id, _micros(created_at), _micros(expires_at)))


_PREPARED: dict[bytes, Any] = {}  # HMAC-SHA-256 states keyed (ipad/opad absorbed), copied per tag: the hot path
_PREPARED_MAX = 8  # a handful of keys ever (one per suite and rotation); never grows without bound


def _mac(suite: int, key: bytes, message: bytes) -> bytes:
    if suite == suites.AES_256_GCM:
        key = bytes(key)
        prepared = _PREPARED.get(key)
        if prepared is None:
            if len(_PREPARED) >= _PREPARED_MAX:
                _PREPARED.clear()
            prepared = _PREPARED[key] = hmac.new(key, digestmod=hashlib.sha256)
        state = prepared.copy()
        state.update(message)
        return state.digest()
    return suites.hmac_digest(suite, key, message)  # HMAC-SM3; refuses an unknown suite


def seal(key: bytes, message: bytes, *, suite: int) -> bytes:
    """The tag to store with the row."""
    if len(key) < 32:
        raise ValueError("an integrity key must be at least 32 bytes")
    return bytes((FORMAT, suite)) + _mac(suite, key, message)


def check(tag: bytes | None, message: bytes, key_for: KeyLookup) -> bool:
    """True only if `tag` is a well-formed tag of `message` under the key of its suite. Never raises."""
    try:
        if tag is None or len(tag) != TAG_SIZE or tag[0] != FORMAT:
            return False
        key = key_for(tag[1])
        if key is None:
            return False
        return hmac.compare_digest(_mac(tag[1], key, message), bytes(tag[2:]))
    except Exception:  # noqa: BLE001 - any failure is a tag that does not verify
        return False
