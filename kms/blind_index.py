"""Blind indexes: keyed, truncated hashes that allow exact-match lookup of a value without storing or decrypting it.

Owns: the index message encoding, the choice of MAC per cipher suite, and the comparison of two index values.
Never: normalises values (the caller decides what "the same value" means, e.g. an ID number's canonical form, and
must keep that stable), accepts a short key (an index is only as strong as its key against dictionary attacks on
small value spaces like phone numbers), or compares in variable time.

index = MAC(key, b"hv/bidx/v1\\0" || kind (UTF-8) || b"\\0" || normalized_value (UTF-8))[:16]
MAC = HMAC-SHA256 for the AES suite (kms.suites.AES_256_GCM, the default), HMAC-SM3 for the SM suite (SM4_GCM).
`kind` may not contain NUL, so (kind, value) pairs never collide; use one key per kind and per suite as well
(KeyManager.service_key(suites.purpose("blind-index:<kind>", suite))): the two MACs never share a key.
16 bytes keeps accidental collisions negligible (2^-64 birthday bound at 2^32 rows) while leaking less than a full
digest. An index says nothing about its suite, so a vault that changed suite looks a value up under every suite it
has a key for (see vault.fields).
"""

from __future__ import annotations

import hashlib
import hmac

from kms import suites

INDEX_SIZE = 16
MIN_KEY_SIZE = 32
_DOMAIN = b"hv/bidx/v1\0"


def compute(key: bytes, *, kind: str, normalized_value: str, suite: int = suites.AES_256_GCM) -> bytes:
    if len(key) < MIN_KEY_SIZE:
        raise ValueError("a blind-index key must be at least 32 bytes")
    if not kind or "\0" in kind:
        raise ValueError("kind must be non-empty and contain no NUL")
    message = _DOMAIN + kind.encode("utf-8") + b"\0" + normalized_value.encode("utf-8")
    if suite == suites.AES_256_GCM:
        return hmac.digest(bytes(key), message, hashlib.sha256)[:INDEX_SIZE]
    return suites.hmac_digest(suite, key, message)[:INDEX_SIZE]  # HMAC-SM3; refuses an unknown suite


def matches(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
