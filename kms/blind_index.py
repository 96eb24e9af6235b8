"""Blind indexes: keyed, truncated hashes that allow exact-match lookup of a value without storing or decrypting it.

Owns: the index message encoding and the comparison of two index values.
Never: normalises values (the caller decides what "the same value" means, e.g. an ID number's canonical form, and
must keep that stable), accepts a short key (an index is only as strong as its key against dictionary attacks on
small value spaces like phone numbers), or compares in variable time.

index = HMAC-SHA256(key, b"hv/bidx/v1\\0" || kind (UTF-8) || b"\\0" || normalized_value (UTF-8))[:16]
`kind` may not contain NUL, so (kind, value) pairs never collide; use one key per kind as well
(KeyManager.service_key("blind-index:<kind>")).
16 bytes keeps accidental collisions negligible (2^-64 birthday bound at 2^32 rows) while leaking less than a full
digest.
"""

from __future__ import annotations

import hashlib
import hmac

INDEX_SIZE = 16
MIN_KEY_SIZE = 32
_DOMAIN = b"hv/bidx/v1\0"


def compute(key: bytes, *, kind: str, normalized_value: str) -> bytes:
    if len(key) < MIN_KEY_SIZE:
        raise ValueError("a blind-index key must be at least 32 bytes")
    if not kind or "\0" in kind:
        raise ValueError("kind must be non-empty and contain no NUL")
    message = _DOMAIN + kind.encode("utf-8") + b"\0" + normalized_value.encode("utf-8")
    return hmac.digest(bytes(key), message, hashlib.sha256)[:INDEX_SIZE]


def matches(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
