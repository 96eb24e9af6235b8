"""Field encryption: one AEAD ciphertext per column value, bound to where it lives.

Owns: the field ciphertext wire format, the canonical associated-data encoding for a field's place
(table, column, row, patient), and the header-driven choice of key on decryption.
Never: returns plaintext that did not authenticate, says why a decryption failed (every failure is the same
CryptoError), or accepts a key whose id/version differs from the header (that would let a resolver bug decrypt
under the wrong key silently).

Wire format (all integers big-endian):

    offset  size  field
    0       1     format_version   u8, = 1
    1       1     suite            u8, see kms.suites (1 = AES-256-GCM, 2 = SM4-GCM)
    2       16    key_id           the DataKey's id
    18      4     key_version      u32
    22      12    nonce            random per encryption
    34      n     ciphertext       n = len(plaintext)
    34+n    16    tag

The suite byte is the key's suite (DataKey.suite), so a vault that switches crypto_suite keeps decrypting its old
ciphertexts: each is opened with the algorithm its own header names, and a key whose suite differs from the header is
refused. Layout and sizes are the same for both suites (12-byte nonce, 16-byte tag).

The 34 header bytes are authenticated too: AEAD associated data = header(34) || associated_data, so changing the
suite, key id, version or format byte breaks the tag. Minimum length is 50 (empty plaintext).

Random 96-bit nonces are safe for one DEK per record (few fields each); never encrypt more than ~2^32 values under
one DataKey.

Associated data for a field (`field_aad`), parts each as u16 length + UTF-8 bytes, in this order:
    "hv/field/v1" (domain tag), table, column, row_id, patient_id
Length prefixes make the encoding injective: ("ab", "c") and ("a", "bc") never collide.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import NamedTuple

from cryptography.exceptions import InvalidTag

from kms.errors import CryptoError
from kms.keys import DataKey
from kms.suites import NONCE_SIZE, TAG_SIZE

FORMAT_VERSION = 1
_FORMAT_BYTE = bytes((FORMAT_VERSION,))
_PREFIX = struct.Struct(">BB16sI")  # format, suite, key_id, key_version
PREFIX_SIZE = _PREFIX.size  # 22
HEADER_SIZE = PREFIX_SIZE + NONCE_SIZE  # 34
MIN_SIZE = HEADER_SIZE + TAG_SIZE  # 50

_FIELD_DOMAIN = b"hv/field/v1"
_DOMAIN_PART = len(_FIELD_DOMAIN).to_bytes(2, "big") + _FIELD_DOMAIN
_MAX_PART = 0xFFFF

KeyOrResolver = DataKey | Callable[[bytes, int], DataKey]


class Header(NamedTuple):
    format_version: int
    suite: int
    key_id: bytes
    key_version: int


def field_aad(*, table: str, column: str, row_id: str, patient_id: str) -> bytes:
    # Called once per field on every read and write, so it is written flat rather than as a loop over parts.
    t, c, r, p = table.encode(), column.encode(), row_id.encode(), patient_id.encode()
    if len(t) > _MAX_PART or len(c) > _MAX_PART or len(r) > _MAX_PART or len(p) > _MAX_PART:
        raise ValueError("associated-data part longer than 65535 bytes")
    return b"".join((_DOMAIN_PART, len(t).to_bytes(2, "big"), t, len(c).to_bytes(2, "big"), c,
                     len(r).to_bytes(2, "big"), r, len(p).to_bytes(2, "big"), p))


def encrypt(key: DataKey, plaintext: bytes, associated_data: bytes) -> bytes:
    aead = key._aead
    if aead is None:
        raise ValueError("cannot encrypt with a wiped DataKey")
    nonce = os.urandom(NONCE_SIZE)
    header = _FORMAT_BYTE + key._ident + nonce
    return header + aead.encrypt(nonce, plaintext, header + associated_data)


def header_of(ciphertext: bytes) -> Header:
    """Which key a ciphertext needs, read without decrypting (for resolvers and re-wrap jobs)."""
    if not isinstance(ciphertext, (bytes, bytearray, memoryview)) or len(ciphertext) < MIN_SIZE:
        raise CryptoError()
    fmt, suite, key_id, version = _PREFIX.unpack_from(ciphertext, 0)
    if fmt != FORMAT_VERSION:
        raise CryptoError()
    return Header(fmt, suite, key_id, version)


def resolve(key: KeyOrResolver, key_id: bytes, key_version: int, suite: int) -> DataKey:
    """The key for a header, checked against it. Shared with kms.stream.

    A resolver's own exceptions (an unreachable key store, say) pass through unchanged: they are operational faults,
    not evidence about the ciphertext. A resolver that cannot find a key should raise CryptoError.
    """
    chosen = key if isinstance(key, DataKey) else key(key_id, key_version)
    if (not isinstance(chosen, DataKey) or chosen.key_id != key_id or chosen.version != key_version
            or chosen.suite != suite):
        raise CryptoError()
    return chosen


def decrypt(key: KeyOrResolver, ciphertext: bytes, associated_data: bytes) -> bytes:
    if not isinstance(ciphertext, (bytes, bytearray, memoryview)) or len(ciphertext) < MIN_SIZE:
        raise CryptoError()
    if isinstance(key, DataKey):
        # Hot path: one comparison checks format, suite, key id and version against the key we were given.
        if ciphertext[:PREFIX_SIZE] != _FORMAT_BYTE + key._ident:
            raise CryptoError()
    else:
        header = header_of(ciphertext)
        key = resolve(key, header.key_id, header.key_version, header.suite)
    aead = key._aead
    if aead is None:
        raise CryptoError()
    head = bytes(ciphertext[:HEADER_SIZE])
    try:
        return aead.decrypt(head[PREFIX_SIZE:], ciphertext[HEADER_SIZE:], head + associated_data)
    except (InvalidTag, TypeError, ValueError, OverflowError):
        raise CryptoError() from None
