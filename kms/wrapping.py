"""The wire format of wrapped keys: how a DEK is sealed under a patient KEK, and the associated data of every wrap.

Owns: the byte layouts below, their parsing (every length is checked before anything is sliced: a wrapped key comes
from the data database, which kms does not trust), the AAD that binds each wrapped key to its owner, version and
suite, and sealing/opening a DEK with a KEK the caller already holds.
Never: looks a key up, caches one, or reports why a wrap did not open (one opaque CryptoError for every failure);
accepts a wrap whose length does not match the DEK suite it names.

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

Patient ids and purposes are 1 to 64 characters without NUL (`encode_name`).
"""

from __future__ import annotations

import dataclasses
import os
import struct
from typing import NamedTuple

from cryptography.exceptions import InvalidTag

from kms import suites
from kms.errors import CryptoError
from kms.keys import DataKey
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
MAX_NAME = 64
_CRYPTO_FAILURES = (InvalidTag, CryptoError, ValueError, TypeError)


class Wrap(NamedTuple):
    """A parsed wrapped DEK: its format, the KEK version and DEK suite it names, the DEK's id, nonce and sealed part."""

    format: int
    kek_version: int
    suite: int
    key_id: bytes
    nonce: bytes
    sealed: bytes


def parse(blob: object) -> Wrap:
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
        return Wrap(fmt, kek_version, suite, key_id, nonce, bytes(blob[_WRAP_HEAD.size:]))
    if fmt == WRAP_FORMAT_V1:
        if len(blob) != WRAPPED_SIZE_V1:
            raise CryptoError()
        _, kek_version, key_id, nonce = _WRAP_HEAD_V1.unpack_from(blob, 0)
        return Wrap(fmt, kek_version, AES_256_GCM, key_id, nonce, bytes(blob[_WRAP_HEAD_V1.size:]))
    raise CryptoError()


@dataclasses.dataclass(frozen=True)
class WrappedKey:
    """A DEK wrapped under a patient KEK; self-describing (carries the KEK version, the DEK's suite and id)."""

    blob: bytes

    def parts(self) -> tuple[int, bytes, bytes, bytes]:
        """(kek_version, key_id, nonce, sealed); CryptoError if the blob is not a well-formed wrapped key."""
        parsed = parse(self.blob)
        return parsed.kek_version, parsed.key_id, parsed.nonce, parsed.sealed

    @property
    def format(self) -> int:
        return parse(self.blob).format

    @property
    def kek_version(self) -> int:
        return parse(self.blob).kek_version

    @property
    def suite(self) -> int:
        return parse(self.blob).suite

    @property
    def key_id(self) -> bytes:
        return parse(self.blob).key_id


def wrapped_kek_version(blob: object) -> int:
    """The KEK version a wrapped DEK names (CryptoError if malformed): what status counts and rewrap compares."""
    return parse(blob).kek_version


def encode_name(value: object, what: str) -> bytes:
    """A patient id or service-key purpose as the UTF-8 bytes its AADs carry; ValueError unless 1..64 chars, no NUL."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME or "\0" in value:
        raise ValueError(f"{what} must be a non-empty string of at most {MAX_NAME} characters without NUL")
    return value.encode("utf-8")


def dek_aad(patient: bytes, kek_version: int, suite: int, key_id: bytes) -> bytes:
    return _DEK_DOMAIN + patient + struct.pack(">IB", kek_version, suite) + key_id


def dek_aad_v1(patient: bytes, kek_version: int, key_id: bytes) -> bytes:
    return _DEK_DOMAIN_V1 + patient + struct.pack(">I", kek_version) + key_id


def kek_aad(patient: bytes, version: int, suite: int = AES_256_GCM) -> bytes:
    if suite == AES_256_GCM:
        return _KEK_DOMAIN + struct.pack(">I", version) + patient
    return _KEK_DOMAIN_V2 + struct.pack(">BI", suite, version) + patient


def svc_aad(purpose: bytes, version: int) -> bytes:
    return _SVC_DOMAIN + struct.pack(">I", version) + purpose


def wrap_dek(patient: bytes, kek: DataKey, material: bytes | bytearray, key_id: bytes, dek_suite: int) -> bytes:
    """A format-2 wrap of DEK `material` (suite `dek_suite`, id `key_id`) under `kek` for `patient`."""
    aead = kek._cipher()
    if aead is None:
        raise CryptoError()
    nonce = os.urandom(NONCE_SIZE)
    sealed = aead.encrypt(nonce, bytes(material), dek_aad(patient, kek.version, dek_suite, key_id))
    return _WRAP_HEAD.pack(WRAP_FORMAT, kek.version, dek_suite, key_id, nonce) + sealed


def unwrap_dek(patient: bytes, kek: DataKey, parsed: Wrap) -> bytes:
    """The DEK bytes of a parsed wrap, opened with `kek` (the version it names); CryptoError on any failure."""
    aead = kek._cipher()
    if aead is None:
        raise CryptoError()
    if parsed.format == WRAP_FORMAT_V1:
        aad = dek_aad_v1(patient, parsed.kek_version, parsed.key_id)
    else:
        aad = dek_aad(patient, parsed.kek_version, parsed.suite, parsed.key_id)
    try:
        material = aead.decrypt(parsed.nonce, parsed.sealed, aad)
    except _CRYPTO_FAILURES:
        raise CryptoError() from None
    if len(material) != suites.key_size(parsed.suite):
        raise CryptoError()
    return material


def zero(buffer: bytearray) -> None:
    """Overwrite a buffer of key material in place (best effort: Python may hold other copies)."""
    buffer[:] = bytes(len(buffer))
