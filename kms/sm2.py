"""SM2 digital signatures (GB/T 32918.2-2016, GM/T 0003.2-2012) for the SM suite: the audit checkpoint signer.

Owns: turning a 32-byte kms service key into an SM2 key pair, signing with the standard's ZA prefix and user id
(default "1234567812345678", GM/T 0009), the raw signature encoding r || s (32 + 32 bytes, big-endian), the
uncompressed public key 0x04 || x || y (65 bytes), and the start-up self-test.
Never: implements the signature itself: signing and library verification are GmSSL's (https://github.com/guanzhi/
GmSSL, 3.2.0, through the `gmssl-pyx` C extension, which compiles GmSSL into the wheel); this module only derives
the public key (one scalar multiplication of the base point, below) and converts encodings. Never logs, returns or
reprs the private scalar.

Why GmSSL (docs/sm-suite.md has the full reasoning): it is the reference open-source 国密 implementation from Peking
University, maintained, with constant-time SM2 code paths, and `gmssl-pyx` is a thin binding that ships it compiled
(no system library needed). It is checked here, at every start-up, against the GB/T 32918.5 / GM/T 0003.5 Annex A
example: the standard's public key must verify the standard's signature over "message digest" with the default id,
and our derivation of that example's public key from its private key must give the standard's public key. The tests
also check every checkpoint signature with two other implementations: the pure-Python verifier in audit/verify.py and
the OpenSSL command line (`openssl dgst -sm3 -verify ... -sigopt distid:1234567812345678`).

Key derivation: d = 1 + (int(HKDF-SM3(seed, info = b"hv/sm2-signing-key/v1", 40 bytes)) mod (n - 2)), so d is in
[1, n-2] as GB/T 32918.1 §6.1 requires, with a bias below 2^-60. The public key P = d·G is computed with a Montgomery
ladder in Jacobian coordinates (a uniform sequence of operations; Python integers are not constant-time, and this
runs once per process per key).
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import NoReturn, TypedDict

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kms.suites import SuiteUnavailable

DEFAULT_USER_ID = b"1234567812345678"
PUBLIC_KEY_SIZE = 65
SIGNATURE_SIZE = 64

# GB/T 32918.5-2017 recommended curve parameters (sm2p256v1).
P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
GX = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
GY = 0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0

_KDF_INFO = b"hv/sm2-signing-key/v1"

# GB/T 32918.5-2017 / GM/T 0003.5-2012 Annex A: signature example on the recommended curve.
class _Example(TypedDict):
    private: str
    public: str
    message: bytes
    user_id: bytes
    za: str
    signature: str


STANDARD_EXAMPLE: _Example = {
    "private": "3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8",
    "public": "04" "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
              "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13",
    "message": b"message digest",
    "user_id": DEFAULT_USER_ID,
    "za": "B2E14C5C79C6DF5B85F4FE7ED8DB7A262B9DA7E07CCB0EA9F4747B8CCDA8A4F3",
    "signature": "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
                 "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA",
}


# ---- the one piece of curve arithmetic kept here: P = d·G ----------------------------------------------------------

_Jacobian = tuple[int, int, int]  # (X, Y, Z): affine (X/Z^2, Y/Z^3); Z = 0 is the point at infinity
_INFINITY: _Jacobian = (1, 1, 0)


def _double(point: _Jacobian) -> _Jacobian:
    x1, y1, z1 = point
    if not z1 or not y1:
        return _INFINITY
    yy = y1 * y1 % P
    s = 4 * x1 * yy % P
    zz = z1 * z1 % P
    m = (3 * x1 * x1 + A * zz * zz) % P
    x3 = (m * m - 2 * s) % P
    return x3, (m * (s - x3) - 8 * yy * yy) % P, 2 * y1 * z1 % P


def _add(p1: _Jacobian, p2: _Jacobian) -> _Jacobian:
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    if not z1:
        return p2
    if not z2:
        return p1
    z1z1, z2z2 = z1 * z1 % P, z2 * z2 % P
    u1, u2 = x1 * z2z2 % P, x2 * z1z1 % P
    s1, s2 = y1 * z2 * z2z2 % P, y2 * z1 * z1z1 % P
    h, r = (u2 - u1) % P, (s2 - s1) % P
    if not h:
        return _double(p1) if not r else _INFINITY
    hh = h * h % P
    hhh, v = h * hh % P, u1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    return x3, (r * (v - x3) - s1 * hhh) % P, h * z1 * z2 % P


def _base_multiple(d: int) -> tuple[int, int]:
    """Affine d·G by a Montgomery ladder over all 256 bits."""
    r0, r1 = _INFINITY, (GX, GY, 1)
    for i in reversed(range(256)):
        if (d >> i) & 1:
            r0, r1 = _add(r0, r1), _double(r1)
        else:
            r0, r1 = _double(r0), _add(r0, r1)
    x, y, z = r0
    if not z:
        raise ValueError("SM2: d·G is the point at infinity")
    zinv = pow(z, -1, P)
    zinv2 = zinv * zinv % P
    return x * zinv2 % P, y * zinv2 * zinv % P


def public_key_of(d: int) -> bytes:
    """0x04 || x || y of d·G."""
    if not 1 <= d <= N - 2:
        raise ValueError("SM2 private key out of range [1, n-2]")
    x, y = _base_multiple(d)
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


# ---- encodings ------------------------------------------------------------------------------------------------------

def _der_int(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 8) // 8, "big")  # one leading 0x00 when the top bit is set
    return b"\x02" + bytes([len(body)]) + body


def raw_to_der(signature: bytes) -> bytes:
    """r || s (64 bytes) -> DER SEQUENCE { INTEGER r, INTEGER s }."""
    if len(signature) != SIGNATURE_SIZE:
        raise ValueError("an SM2 signature is 64 bytes r || s")
    body = _der_int(int.from_bytes(signature[:32], "big")) + _der_int(int.from_bytes(signature[32:], "big"))
    return b"\x30" + bytes([len(body)]) + body


def der_to_raw(der: bytes) -> bytes:
    """DER SEQUENCE { INTEGER r, INTEGER s } (strict, short lengths only) -> r || s (64 bytes)."""
    def integer(at: int) -> tuple[int, int]:
        if at + 2 > len(der) or der[at] != 0x02 or not 1 <= der[at + 1] <= 33:
            raise ValueError("SM2 signature: bad DER INTEGER")
        length = der[at + 1]
        body = der[at + 2:at + 2 + length]
        if len(body) != length or body[0] & 0x80 or (length > 1 and body[0] == 0 and not body[1] & 0x80):
            raise ValueError("SM2 signature: non-canonical DER INTEGER")
        return int.from_bytes(body, "big"), at + 2 + length

    if len(der) < 8 or der[0] != 0x30 or der[1] != len(der) - 2:
        raise ValueError("SM2 signature: bad DER SEQUENCE")
    r, at = integer(2)
    s, at = integer(at)
    if at != len(der) or not (0 < r < N and 0 < s < N):
        raise ValueError("SM2 signature: trailing bytes or r, s out of range")
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def za(public_key: bytes, user_id: bytes = DEFAULT_USER_ID) -> bytes:
    """ZA = SM3(ENTL || ID || a || b || xG || yG || xA || yA) (GB/T 32918.2 §5.5), for tests and documentation."""
    if len(public_key) != PUBLIC_KEY_SIZE or public_key[0] != 4 or len(user_id) >= 8192:
        raise ValueError("SM2: 65-byte uncompressed public key and a user id under 8192 bytes")
    digest = hashes.Hash(hashes.SM3())
    digest.update((len(user_id) * 8).to_bytes(2, "big") + user_id)
    for value in (A, B, GX, GY):
        digest.update(value.to_bytes(32, "big"))
    digest.update(public_key[1:])
    return digest.finalize()


# ---- the library --------------------------------------------------------------------------------------------------

@functools.cache
def _gmssl() -> ModuleType:
    try:
        import gmssl_pyx
    except ImportError as exc:
        raise SuiteUnavailable(
            "crypto_suite='sm' signs audit checkpoints with SM2, which needs the `gmssl-pyx` package (GmSSL): "
            f"pip install gmssl-pyx ({exc})") from None
    lib: ModuleType = gmssl_pyx  # untyped C extension
    return lib


def verify(public_key: bytes, message: bytes, signature: bytes, user_id: bytes = DEFAULT_USER_ID) -> bool:
    """GmSSL's SM2 verification of a raw r || s signature (False on any malformed input)."""
    lib = _gmssl()
    if len(public_key) != PUBLIC_KEY_SIZE or public_key[0] != 4 or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        der = raw_to_der(signature)
        return bool(lib.sm2_verify(bytes(public_key[1:]), bytes(message), der, signer_id=bytes(user_id)))
    except (ValueError, lib.GmsslInnerError):
        return False


class SM2PrivateKey:
    """An SM2 signing key derived from a kms service key. Holds the scalar only as long as this object lives."""

    __slots__ = ("__weakref__", "_d", "_private", "_public")

    def __init__(self, d: int) -> None:
        self._public = public_key_of(d)
        self._d = d
        self._private = d.to_bytes(32, "big")

    @classmethod
    def from_seed(cls, seed: bytes) -> SM2PrivateKey:
        if len(seed) < 32:
            raise ValueError("an SM2 key is derived from at least 32 bytes of key material")
        okm = HKDF(algorithm=hashes.SM3(), length=40, salt=None, info=_KDF_INFO).derive(bytes(seed))
        return cls(1 + int.from_bytes(okm, "big") % (N - 2))

    def public_key(self) -> bytes:
        """0x04 || x || y (65 bytes)."""
        return self._public

    def sign(self, message: bytes, user_id: bytes = DEFAULT_USER_ID) -> bytes:
        """r || s over SM3(ZA || message), ZA with `user_id` (GB/T 32918.2 §6.1); k from GmSSL's CSPRNG."""
        der = _gmssl().sm2_sign(self._private, self._public[1:], bytes(message), signer_id=bytes(user_id))
        return der_to_raw(der)

    def __repr__(self) -> str:
        return f"SM2PrivateKey(public={self._public.hex()[:18]}...)"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("SM2PrivateKey cannot be pickled")


def self_test() -> None:
    """Raise SuiteUnavailable unless GmSSL is importable and agrees with the standard's Annex A example, and our
    public-key derivation reproduces the example's public key."""
    example = STANDARD_EXAMPLE
    public = bytes.fromhex(example["public"])
    signature = bytes.fromhex(example["signature"])
    problems = []
    if public_key_of(int(example["private"], 16)) != public:
        problems.append("d·G does not give the GB/T 32918.5 example's public key")
    if za(public, example["user_id"]) != bytes.fromhex(example["za"]):
        problems.append("ZA of the GB/T 32918.5 example is wrong (SM3?)")
    if not verify(public, example["message"], signature):
        problems.append("GmSSL does not verify the GB/T 32918.5 example signature")
    # (Refusals of wrong messages, ids and keys are in tests/audit/test_sm2.py: GmSSL prints a trace to stderr for
    # every failed verification, which start-up should not.)
    key = SM2PrivateKey.from_seed(bytes(range(32)))
    probe = b"hv/sm2 self-test"
    if not verify(key.public_key(), probe, key.sign(probe)):
        problems.append("a fresh GmSSL signature does not verify")
    if problems:
        raise SuiteUnavailable("crypto_suite='sm': the SM2 implementation failed its self-test: " + "; ".join(problems))


def require() -> None:
    """Start-up check for the SM suite's signatures (SuiteUnavailable with a clear message)."""
    _gmssl()
    self_test()
