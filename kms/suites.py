"""Cipher-suite identifiers, the one place that turns a suite id plus key bytes into an AEAD object, and the start-up
check that the runtime really has a suite's primitives.

Owns: the u8 suite ids written into every ciphertext header, their names in settings ("aes", "sm"), the key size of
each suite, construction of the matching AEAD primitive, the suite's hash (for HKDF, HMAC blind indexes) and the
known-answer self-test run before a vault starts on a suite.
Never: guesses a suite. An id that is not implemented is refused, so a header naming an unknown suite fails closed
instead of being decrypted with the wrong algorithm; a runtime that lacks a primitive is refused at start-up with a
message naming what is missing, never at the first write.

Ids (u8, stable forever once written to disk):
    1  AES_256_GCM  "aes"  32-byte key, 12-byte nonce, 16-byte tag; hash SHA-256
    2  SM4_GCM      "sm"   16-byte key, 12-byte nonce, 16-byte tag (GB/T 32907 SM4 in GCM, RFC 8998); hash SM3
                           (GB/T 32905). The SM suite's signatures are SM2 (kms.sm2).

SM4-GCM comes from `cryptography`'s OpenSSL (Cipher(algorithms.SM4(key), modes.GCM(nonce))); `SM4GCM` gives it the
AESGCM interface (encrypt/decrypt/encrypt_into/decrypt_into, InvalidTag on failure) so every format above it is
suite-agnostic. Each call builds a fresh cipher context (about 10 us): the SM suite trades speed for the standard.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac
from cryptography.hazmat.primitives.ciphers import (
    AEADDecryptionContext,
    AEADEncryptionContext,
    Cipher,
    algorithms,
    modes,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.errors import KeyStoreError

Buffer = bytes | bytearray | memoryview  # what the AEAD objects accept (as cryptography.utils.Buffer)

AES_256_GCM = 1
SM4_GCM = 2

KEY_SIZE = 32  # AES-256-GCM; kept for callers written before the SM suite (use key_size(suite))
SM4_KEY_SIZE = 16
NONCE_SIZE = 12
TAG_SIZE = 16

IMPLEMENTED = frozenset({AES_256_GCM, SM4_GCM})
NAMES = {"aes": AES_256_GCM, "sm": SM4_GCM}
_KEY_SIZES = {AES_256_GCM: KEY_SIZE, SM4_GCM: SM4_KEY_SIZE}


class SuiteUnavailable(KeyStoreError):
    """The runtime lacks a primitive the configured suite needs; raised at start-up with a human-readable reason."""


def is_supported(suite: int) -> bool:
    return suite in IMPLEMENTED


def by_name(name: str) -> int:
    """The suite id of a settings name ("aes" or "sm")."""
    try:
        return NAMES[name]
    except (KeyError, TypeError):
        raise ValueError(f"crypto suite must be one of {', '.join(sorted(NAMES))}") from None


def name_of(suite: int) -> str:
    for name, value in NAMES.items():
        if value == suite:
            return name
    raise ValueError(f"cipher suite {suite!r} is not implemented")


def purpose(base: str, suite: int) -> str:
    """The service-key purpose of `base` under a suite: the AES suite keeps the original names ("pseudonym",
    "blind-index:phone", ...), the SM suite prefixes "sm:". One key per algorithm: HMAC-SM3 never shares a key with
    HMAC-SHA-256, nor an SM2 signing key with an Ed25519 one, and whether a vault ever used a suite is simply whether
    its key store holds that suite's key."""
    if suite == AES_256_GCM:
        return base
    if suite == SM4_GCM:
        return "sm:" + base
    raise ValueError(f"cipher suite {suite!r} is not implemented")


def key_size(suite: int) -> int:
    """Bytes of key material a suite's keys carry (SM4 keys are 16 bytes, AES-256 keys 32)."""
    try:
        return _KEY_SIZES[suite]
    except (KeyError, TypeError):
        raise ValueError(f"cipher suite {suite!r} is not implemented") from None


def hash_algorithm(suite: int) -> hashes.HashAlgorithm:
    """The suite's hash, for HKDF and HMAC: SHA-256 for AES, SM3 for SM."""
    if suite == AES_256_GCM:
        return hashes.SHA256()
    if suite == SM4_GCM:
        return hashes.SM3()
    raise ValueError(f"cipher suite {suite!r} is not implemented")


def hmac_digest(suite: int, key: bytes, message: bytes) -> bytes:
    """HMAC-SHA-256 or HMAC-SM3 (32 bytes either way)."""
    mac = _hmac.HMAC(bytes(key), hash_algorithm(suite))
    mac.update(message)
    return mac.finalize()


class SM4GCM:
    """SM4 in GCM mode with the AESGCM interface: ciphertext || 16-byte tag, InvalidTag on any failure."""

    __slots__ = ("_algorithm",)

    def __init__(self, key: Buffer) -> None:
        if len(key) != SM4_KEY_SIZE:
            raise ValueError("SM4-GCM needs a 16-byte key")
        self._algorithm = algorithms.SM4(bytes(key))

    def _encryptor(self, nonce: Buffer, associated_data: Buffer | None) -> AEADEncryptionContext:
        encryptor = Cipher(self._algorithm, modes.GCM(bytes(nonce))).encryptor()
        if associated_data:
            encryptor.authenticate_additional_data(associated_data)
        return encryptor

    def _decryptor(self, nonce: Buffer, data: memoryview, associated_data: Buffer | None) -> AEADDecryptionContext:
        if len(data) < TAG_SIZE:
            raise InvalidTag()
        decryptor = Cipher(self._algorithm, modes.GCM(bytes(nonce), bytes(data[-TAG_SIZE:]))).decryptor()
        if associated_data:
            decryptor.authenticate_additional_data(associated_data)
        return decryptor

    def encrypt(self, nonce: Buffer, data: Buffer, associated_data: Buffer | None) -> bytes:
        encryptor = self._encryptor(nonce, associated_data)
        sealed = encryptor.update(data) + encryptor.finalize()
        return sealed + encryptor.tag

    def decrypt(self, nonce: Buffer, data: Buffer, associated_data: Buffer | None) -> bytes:
        view = memoryview(data).cast("B")
        decryptor = self._decryptor(nonce, view, associated_data)
        plaintext = decryptor.update(view[:-TAG_SIZE])
        decryptor.finalize()  # raises InvalidTag: the plaintext above is dropped unreleased
        return plaintext

    def encrypt_into(self, nonce: Buffer, data: Buffer, associated_data: Buffer | None, buf: Buffer) -> None:
        """Like AESGCM.encrypt_into: buf is exactly len(data) + 16 bytes."""
        n = len(data)
        if len(buf) != n + TAG_SIZE:
            raise ValueError("buffer must be len(data) + 16 bytes")
        encryptor = self._encryptor(nonce, associated_data)
        out = memoryview(buf).cast("B")
        # GCM is a stream mode, so update_into writes exactly n bytes; it asks for block_size - 1 spare bytes, which
        # the tag's room provides.
        if encryptor.update_into(data, out) != n:
            raise ValueError("SM4-GCM wrote an unexpected length")
        encryptor.finalize()
        out[n:] = encryptor.tag

    def decrypt_into(self, nonce: Buffer, data: Buffer, associated_data: Buffer | None, buf: Buffer) -> None:
        """Like AESGCM.decrypt_into: buf is exactly len(data) - 16 bytes; written only once the tag verified."""
        view = memoryview(data).cast("B")
        if len(buf) != len(view) - TAG_SIZE:
            raise ValueError("buffer must be len(data) - 16 bytes")
        decryptor = self._decryptor(nonce, view, associated_data)
        plaintext = decryptor.update(view[:-TAG_SIZE])
        decryptor.finalize()
        memoryview(buf).cast("B")[:] = plaintext


Aead = AESGCM | SM4GCM  # what every format above this module seals and opens with


def new_aead(suite: int, key: Buffer) -> Aead:
    """Build the AEAD object once per key; construction (key schedule) costs as much as a small field operation.
    AESGCM for suite 1, SM4GCM (same interface) for suite 2."""
    if suite == AES_256_GCM:
        if len(key) != KEY_SIZE:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        return AESGCM(bytes(key))
    if suite == SM4_GCM:
        return SM4GCM(key)
    raise ValueError(f"cipher suite {suite!r} is not implemented")


# ---- start-up self-test ---------------------------------------------------------------------------------------------

# RFC 8998 Appendix A.1 (SM4-GCM), GB/T 32905-2016 Appendix A.1 (SM3 of "abc").
_SM4_GCM_KAT = {
    "key": "0123456789ABCDEFFEDCBA9876543210",
    "nonce": "00001234567800000000ABCD",
    "aad": "FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2",
    "plaintext": "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
                 "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA",
    "sealed": "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
              "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
              "83DE3541E4C2B58177E065A9BF7B62EC",
}
_SM3_ABC = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"


def _probe_sm4_gcm() -> None:
    kat = {k: bytes.fromhex(v) for k, v in _SM4_GCM_KAT.items()}
    aead = SM4GCM(kat["key"])
    if aead.encrypt(kat["nonce"], kat["plaintext"], kat["aad"]) != kat["sealed"]:
        raise ValueError("SM4-GCM gives a wrong answer for the RFC 8998 A.1 vector")
    if aead.decrypt(kat["nonce"], kat["sealed"], kat["aad"]) != kat["plaintext"]:
        raise ValueError("SM4-GCM does not decrypt the RFC 8998 A.1 vector")
    try:
        aead.decrypt(kat["nonce"], kat["sealed"][:-1] + bytes([kat["sealed"][-1] ^ 1]), kat["aad"])
    except InvalidTag:
        pass
    else:
        raise ValueError("SM4-GCM accepted a forged tag")


def _probe_sm3() -> None:
    digest = hashes.Hash(hashes.SM3())
    digest.update(b"abc")
    if digest.finalize().hex() != _SM3_ABC:
        raise ValueError("SM3 gives a wrong answer for the GB/T 32905 A.1 vector")
    if len(hmac_digest(SM4_GCM, bytes(32), b"hv")) != 32:
        raise ValueError("HMAC-SM3 is not 32 bytes")


PROBES = {SM4_GCM: (("SM4-GCM", _probe_sm4_gcm), ("SM3 / HMAC-SM3", _probe_sm3))}


def require(suite: int) -> None:
    """Raise SuiteUnavailable, naming the primitive, unless this runtime computes every primitive of `suite` right
    (known-answer tests). AES-256-GCM and SHA-256 are part of every `cryptography` build and are not probed."""
    if not is_supported(suite):
        raise SuiteUnavailable(f"cipher suite {suite!r} is not implemented")
    for label, probe in PROBES.get(suite, ()):
        try:
            probe()
        except (UnsupportedAlgorithm, ValueError, TypeError, InvalidTag, AttributeError) as exc:
            raise SuiteUnavailable(
                f"crypto_suite={name_of(suite)!r} needs {label}, which this runtime's `cryptography`/OpenSSL does not "
                f"provide correctly ({type(exc).__name__}: {exc}); install a build with the SM algorithms enabled or "
                f"set crypto_suite='aes'") from None
