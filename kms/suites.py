"""Cipher-suite identifiers and the one place that turns a suite id plus key bytes into an AEAD object.

Owns: the u8 suite ids written into every ciphertext header, and construction of the matching AEAD primitive.
Never: guesses a suite. An id that is not implemented is refused, so a header naming a future suite (SM4-GCM) fails
closed instead of being decrypted with the wrong algorithm.

Ids (u8, stable forever once written to disk):
    1  AES_256_GCM  32-byte key, 12-byte nonce, 16-byte tag
    2  SM4_GCM      reserved for the GB/T (国密) suite; not implemented yet
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

AES_256_GCM = 1
SM4_GCM = 2  # reserved: see module docstring

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16

IMPLEMENTED = frozenset({AES_256_GCM})


def is_supported(suite: int) -> bool:
    return suite in IMPLEMENTED


def new_aead(suite: int, key: bytes) -> AESGCM:
    """Build the AEAD object once per key; construction (key schedule) costs as much as a small field operation."""
    if suite != AES_256_GCM:
        raise ValueError(f"cipher suite {suite!r} is not implemented")
    if len(key) != KEY_SIZE:
        raise ValueError("AES-256-GCM needs a 32-byte key")
    return AESGCM(bytes(key))
