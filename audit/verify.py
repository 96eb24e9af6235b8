"""Offline verifier of a Health Vault audit export: the one file an assessor has to read and trust.

Owns: the hashing rules of the audit trail (event encoding, event hash, chain link, Merkle leaf and node), the
RFC 9162 proof algorithms, the C2SP signed-note / tlog-checkpoint formats, and the check of an export directory.
Never: imports anything but the standard library and `cryptography` (no project module, not even `audit.*`, so it
can be copied out and run alone); trusts the export it checks (pin the key; every length, count and offset read
from the files is checked before use); needs a database or a secret key. The server imports its primitives from
here, so the writer and the verifier cannot drift apart.

Two algorithm suites, told apart by the data itself (H below is the suite's hash):
  "aes" suite  events v 1, hash SHA-256, checkpoints and manifests signed with Ed25519 (RFC 8032)
  "sm"  suite  events v 2, hash SM3 (GB/T 32905), checkpoints and manifests signed with SM2 (GB/T 32918.2: ZA with
               user id "1234567812345678", e = SM3(ZA || note body), signature r || s, 32 bytes each)
A trail whose vault changed suite holds both kinds of event (each chain keeps one kind for its life: the server
starts new chains, ids 32768 and up, for v 2). The Merkle tree, the file hashes and the signatures of an export are
those of the key that signed it: Ed25519 -> SHA-256 tree, SM2 -> SM3 tree (over the same leaf data, whatever the
events' v). Nothing in the "sm" suite computes SHA-256 except the hashes of v 1 events written before the switch.

Formats (exact; u16be/u64be are big-endian unsigned, || is concatenation, hex is lowercase, base64 is the standard
alphabet with padding and must be canonical):

  event        JSON object with exactly the keys EVENT_KEYS, values only strings, integers or null: v (1 or 2),
               chain (0..65535), seq (0..2^64-1, gapless per chain), time ("YYYY-MM-DDTHH:MM:SS.ffffffZ", UTC),
               actor, actor_role, action, resource_type, resource_id, patient, outcome, reason, grant_id,
               request_id, client_addr, user_agent, prev_hash (64 hex).
  canonical    json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
               ("v" sorts last, so a canonical event ends with ',"v":1}' or ',"v":2}')
  event hash   v 1: SHA-256(b"hv-audit-event/v1\\x00" || canonical); v 2: SM3(b"hv-audit-event/v2\\x00" ||
               canonical). prev_hash is 64 zeros for seq 0, else the hex event hash of (same chain, seq - 1).
  leaf data    u16be(chain) || u64be(seq) || event hash                      (42 bytes)
  Merkle tree  RFC 9162 §2.1 with the signing key's hash H: leaf hash H(0x00 || leaf data), node
               H(0x01 || left || right), empty tree H(""); inclusion proofs §2.1.3, consistency proofs §2.1.4.
  vkey         "<name>+<8 hex key id>+<base64(type || public key)>"           (C2SP signed-note), either
               Ed25519: type 0x01, 32-byte public key, key id = SHA-256(name || 0x0A || 0x01 || public key)[:4]
               SM2:     type 0xff || "hv-sm2" (C2SP's escape for unassigned types), 65-byte uncompressed point
                        0x04 || x || y on the GB/T 32918.5 curve, key id = SM3(name || 0x0A || type || key)[:4]
  signed note  body, "\\n", then lines "\\u2014 <name> <base64(key id || 64-byte signature)>\\n" (em dash, space).
               The body is everything before the last blank line, its final "\\n" included; it is what is signed.
               UTF-8, no control characters but "\\n", at most 100 signature lines; lines of other keys are ignored.
  checkpoint   note body "<origin>\\n<tree size, decimal, no leading zero>\\n<base64 32-byte root>\\n" and then
               zero or more non-empty extension lines, each "\\n"-terminated      (C2SP tlog-checkpoint)
  export dir   events.jsonl    per event, in leaf order: '{"event":' || canonical || ',"hash":"' || hex || '"}\\n';
                               the events are the leaves [first_leaf, first_leaf + event_count)
               leaves.bin      leaf data of every leaf [0, tree size of the newest checkpoint)
               checkpoints.txt signed checkpoints joined by a line "---", tree sizes increasing
               proofs.json     {"consistency": [{"from": n1, "to": n2, "proof": [hex, ...]}, ...]}, one entry per
                               consecutive pair of checkpoints, in order
               public_key.txt  the vkey and "\\n" (informative only: pin the key you were given out of band)
               events.csv      the events for humans (checked by its manifest hash only)
               manifest.json   {"format": "hv-audit-export/1", "origin", "first_leaf", "event_count", "tree_size",
                               "since", "until", "created_at", "files": {file name: H hex}, "algorithms":
                               {"signature": "ed25519" | "sm2-sm3", "tree_hash" and "file_hash": "sha256" | "sm3",
                               "event_hash": the sorted list of event hashes used}} ("algorithms" may be absent
                               only from Ed25519 exports written before the SM suite existed)
               manifest.sig    signed note, body "hv-audit-manifest/1\\n<H hex of manifest.json>\\n"

What a passing export proves: every event line is the leaf it claims to be in a log whose roots the key signed, no
event of the range is missing, changed or reordered, and each chain links back to seq 0 through leaves.bin. Event
lines are never re-encoded: the hash is over the exact bytes between the fixed prefix and suffix; chain, seq and
prev_hash are read where the sorted-key encoding puts them, and `strict` also checks each line against the grammar
of the canonical encoding. Whether the leaf range is all of the since/until window is the exporter's signed claim.

Usage: python -m audit.verify DIR --key VKEY_STRING_OR_FILE [--strict]   (exit 0 verified, 1 not, 2 no key given)
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import hashlib
import itertools
import json
import os
import re
import struct
import sys
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes as _hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class VerificationError(ValueError):
    """Anything that does not verify or does not parse: the one error type of the audit trail."""


EVENT_KEYS = frozenset(("v", "chain", "seq", "time", "actor", "actor_role", "action", "resource_type", "resource_id",
                        "patient", "outcome", "reason", "grant_id", "request_id", "client_addr", "user_agent",
                        "prev_hash"))
EVENT_DOMAIN = b"hv-audit-event/v1\x00"
EVENT_DOMAIN_V2 = b"hv-audit-event/v2\x00"
EVENT_FORMATS = {1: "sha256", 2: "sm3"}  # event v -> its hash
SM_CHAIN_BASE = 32768  # the server's convention: v 2 events live in chains 32768.. (the verifier does not rely on it)
ZERO_HASH_HEX = "0" * 64
LEAF_SIZE = 42
EXPORT_FORMAT = "hv-audit-export/1"
MANIFEST_NOTE_TAG = "hv-audit-manifest/1"
EXPORT_FILES = ("events.jsonl", "leaves.bin", "checkpoints.txt", "proofs.json", "public_key.txt", "events.csv")
CHECKPOINT_SEPARATOR = "---\n"
_LEAF = struct.Struct(">HQ")
_MAX_U64 = (1 << 64) - 1
_SIG_PREFIX = "\u2014 "
_MAX_PROBLEMS = 100
_sha256 = hashlib.sha256
_SM3_ABC = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"  # GB/T 32905 A.1


class _SM3:
    """SM3 through `cryptography` when the system OpenSSL behind hashlib lacks it (same interface as hashlib's)."""
    __slots__ = ("_h",)

    def __init__(self, data: bytes = b"") -> None:
        self._h = _hashes.Hash(_hashes.SM3())
        if data:
            self._h.update(data)

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.copy().finalize()

    def hexdigest(self) -> str:
        return self.digest().hex()


class Hasher(Protocol):
    """What this module needs of a hash object (hashlib's, or _SM3)."""

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...


class HashFactory(Protocol):
    """hashlib.sha256 and the like: a new hash object, optionally fed `data` first."""

    def __call__(self, data: bytes = ..., /) -> Hasher: ...


def _hashlib_sm3(data: bytes = b"", /) -> Hasher:
    return hashlib.new("sm3", data)


def _pick_sm3() -> HashFactory:
    try:
        if hashlib.new("sm3", b"abc").hexdigest() == _SM3_ABC:
            return _hashlib_sm3
    except ValueError:
        pass
    try:
        if _SM3(b"abc").hexdigest() == _SM3_ABC:
            return _SM3
    except UnsupportedAlgorithm:
        pass

    def unavailable(data: bytes = b"", /) -> Hasher:
        raise VerificationError("this Python has no SM3 (neither hashlib's OpenSSL nor `cryptography`)")
    return unavailable


_sm3 = _pick_sm3()
HASHES: dict[str, HashFactory] = {"sha256": _sha256, "sm3": _sm3}
_TIME_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
# The canonical encoding as a grammar. json.dumps(ensure_ascii=True) writes bytes 0x20-0x7e as they are except '"'
# and '\', escapes those and \b \f \n \r \t by a backslash, and everything else as \u + 4 lowercase hex digits.
_STR = (rb'"(?:[ !#-\[\]-~]++|\\(?:["\\bfnrt]|u(?:00(?:0[0-7bef]|1[0-9a-f]|7f|[89a-f][0-9a-f])'
        rb'|0[1-9a-f][0-9a-f]{2}|[1-9a-f][0-9a-f]{3})))*+"')
_VALUE = {"v": rb"[12]", "chain": rb"(?P<chain>0|[1-9][0-9]{0,4})", "seq": rb"(?P<seq>0|[1-9][0-9]{0,19})",
          "time": b'"' + _TIME_RE.pattern.encode() + b'"', "prev_hash": rb'"(?P<prev>[0-9a-f]{64})"'}
_ANY = rb"(?:%s|-?(?:0|[1-9][0-9]*+)|null)" % _STR
_EVENT_RE = re.compile(rb"\{%s\}" % b",".join(b'"%s":%s' % (k.encode(), _VALUE.get(k, _ANY))
                                                for k in sorted(EVENT_KEYS)))


# ----------------------------------------------------------------------------------------------- events and chain

def canonical_bytes(event: dict[str, Any]) -> bytes:
    """The canonical encoding of one event, after checking it has exactly the keys and value types of format 1."""
    if not isinstance(event, dict) or event.keys() != EVENT_KEYS:
        raise VerificationError(f"an event has exactly the keys {sorted(EVENT_KEYS)}")
    if any(not (v is None or isinstance(v, str) or type(v) is int) for v in event.values()):
        raise VerificationError("event values are strings, integers or null")
    chain, seq, time, prev = event["chain"], event["seq"], event["time"], event["prev_hash"]
    if type(event["v"]) is not int or event["v"] not in EVENT_FORMATS or type(chain) is not int \
            or not 0 <= chain <= 0xFFFF or type(seq) is not int or not 0 <= seq <= _MAX_U64:
        raise VerificationError("event: v is 1 or 2, chain an integer in 0..65535, seq an integer in 0..2^64-1")
    if not isinstance(time, str) or not _TIME_RE.fullmatch(time):
        raise VerificationError("event: time is RFC 3339 UTC with microseconds, e.g. 2026-11-25T09:31:00.123456Z")
    if not isinstance(prev, str) or not _HEX64_RE.fullmatch(prev):
        raise VerificationError("event: prev_hash is 64 lowercase hex digits")
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def event_version(canonical: bytes) -> int:
    """The v of a canonical event, read from its end (v is the last key)."""
    if canonical.endswith(b',"v":1}'):
        return 1
    if canonical.endswith(b',"v":2}'):
        return 2
    raise VerificationError("event: not a canonical v 1 or v 2 event")


def event_hash(canonical: bytes) -> bytes:
    """The event's own hash over a domain tag and the canonical bytes (the tag keeps event hashes apart from tree
    hashes): SHA-256 for v 1, SM3 for v 2."""
    if canonical.endswith(b',"v":2}'):
        return _sm3(EVENT_DOMAIN_V2 + canonical).digest()
    if canonical.endswith(b',"v":1}'):
        return _sha256(EVENT_DOMAIN + canonical).digest()
    raise VerificationError("event: not a canonical v 1 or v 2 event")


def event_line(canonical: bytes, digest: bytes) -> bytes:
    """One line of events.jsonl, newline included."""
    return b'{"event":' + canonical + b',"hash":"' + digest.hex().encode("ascii") + b'"}\n'


# ------------------------------------------------------------------------------------------------- Merkle tree

def leaf_data(chain: int, seq: int, digest: bytes) -> bytes:
    """The 42 bytes a leaf commits to: which chain, which position in it, and the event hash."""
    if type(chain) is not int or not 0 <= chain <= 0xFFFF or type(seq) is not int or not 0 <= seq <= _MAX_U64:
        raise VerificationError("leaf: chain must fit in a u16 and seq in a u64")
    if len(digest) != 32:
        raise VerificationError("leaf: an event hash is 32 bytes")
    return _LEAF.pack(chain, seq) + bytes(digest)


def _hash_fn(alg: str) -> HashFactory:
    try:
        return HASHES[alg]
    except KeyError:
        raise VerificationError(f"unknown hash {alg!r}") from None


def leaf_hash(data: bytes, alg: str = "sha256") -> bytes:
    return _hash_fn(alg)(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes, alg: str = "sha256") -> bytes:
    return _hash_fn(alg)(b"\x01" + left + right).digest()


def parent_level(joined: bytes | bytearray, alg: str = "sha256") -> list[bytes]:
    """node_hash of each complete pair of a tree level given as concatenated 32-byte hashes (odd last one left)."""
    h = _hash_fn(alg)
    return [h(b"\x01" + joined[i:i + 64]).digest() for i in range(0, len(joined) - 63, 64)]


def empty_root(alg: str = "sha256") -> bytes:
    return _hash_fn(alg)(b"").digest()


def root_from_leaf_hashes(hashes: list[bytes], alg: str = "sha256") -> bytes:
    """MTH(D[n]) level by level: pairs are hashed and an odd last node moves up unchanged, which equals RFC 9162's
    split at the largest power of two below n (every left subtree is perfect)."""
    level = list(hashes)
    if not level:
        return empty_root(alg)
    while len(level) > 1:
        joined = b"".join(level)
        if len(joined) != 32 * len(level):
            raise VerificationError("tree: every hash is 32 bytes")
        level = parent_level(joined, alg) + level[-1:] if len(level) & 1 else parent_level(joined, alg)
    return level[0]


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(leaf_hashes: list[bytes], index: int, size: int, alg: str = "sha256") -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1, by its definition (audit.merkle serves proofs fast)."""
    if not 0 <= index < size <= len(leaf_hashes):
        raise VerificationError("inclusion proof: need 0 <= index < size <= number of leaves")
    path, d = [], leaf_hashes[:size]
    while len(d) > 1:
        k = _split(len(d))
        path.append(root_from_leaf_hashes(d[k:] if index < k else d[:k], alg))
        d, index = (d[:k], index) if index < k else (d[k:], index - k)
    return path[::-1]


def consistency_proof(leaf_hashes: list[bytes], size1: int, size2: int, alg: str = "sha256") -> list[bytes]:
    """PROOF(size1, D[size2]) = SUBPROOF(size1, D[size2], true) of RFC 9162 §2.1.4.1; empty if size1 is 0 or
    size2."""
    if not 0 <= size1 <= size2 <= len(leaf_hashes):
        raise VerificationError("consistency proof: need 0 <= size1 <= size2 <= number of leaves")
    if size1 in (0, size2):
        return []
    proof, d, m, whole = [], leaf_hashes[:size2], size1, True
    while m != len(d):
        k = _split(len(d))
        proof.append(root_from_leaf_hashes(d[k:] if m <= k else d[:k], alg))
        d, m, whole = (d[:k], m, whole) if m <= k else (d[k:], m - k, False)
    if not whole:
        proof.append(root_from_leaf_hashes(d, alg))
    return proof[::-1]


def _hashes_ok(*items: object) -> bool:
    return all(isinstance(h, (bytes, bytearray)) and len(h) == 32 for h in items)


def verify_inclusion(leaf_hash: bytes, index: int, tree_size: int, proof: list[bytes], root: bytes,
                     alg: str = "sha256") -> bool:
    """RFC 9162 §2.1.3.2, step by step."""
    if not 0 <= index < tree_size or not _hashes_ok(leaf_hash, root, *proof):
        return False
    fn, sn, r = index, tree_size - 1, bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r, alg)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p, alg)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes,
                       alg: str = "sha256") -> bool:
    """RFC 9162 §2.1.4.2, step by step. Equal sizes need an empty proof and equal roots; an empty first tree is
    consistent with any tree through an empty proof (as transparency-dev/merkle has it)."""
    if not 0 <= size1 <= size2:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if size1 == 0:
        return not proof
    if not proof or not _hashes_ok(root1, root2, *proof):
        return False
    path = [root1, *proof] if size1 & (size1 - 1) == 0 else list(proof)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr, alg), node_hash(c, sr, alg)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c, alg)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == root1 and sr == root2


# ------------------------------------------------------------------------------------- signed notes, checkpoints

def _b64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError(f"{what}: bad base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise VerificationError(f"{what}: non-canonical base64")
    return raw


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name):
        raise VerificationError("key name: non-empty, no spaces, no '+'")


# ---- SM2 verification (GB/T 32918.2-2016 §7), pure Python so this file stays self-contained -----------------------
# Verification handles only public data, so plain integer arithmetic is fine here. The tests check it against the
# standard's examples on the recommended curve and on GB/T 32918.2 Annex A's test curve, and against GmSSL and OpenSSL.

@dataclasses.dataclass(frozen=True)
class SM2Curve:
    p: int
    a: int
    b: int
    n: int
    gx: int
    gy: int

    def on_curve(self, x: int, y: int) -> bool:
        return 0 <= x < self.p and 0 <= y < self.p and (y * y - x * x * x - self.a * x - self.b) % self.p == 0


SM2_CURVE = SM2Curve(  # GB/T 32918.5-2017, the recommended 256-bit curve
    p=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF,
    a=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC,
    b=0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93,
    n=0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123,
    gx=0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
    gy=0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0)
SM2_DEFAULT_ID = b"1234567812345678"
_Jacobian = tuple[int, int, int]  # (X, Y, Z): affine (X/Z^2, Y/Z^3); Z = 0 is the point at infinity
_INF: _Jacobian = (1, 1, 0)


def _ec_double(q: _Jacobian, c: SM2Curve) -> _Jacobian:
    x1, y1, z1 = q
    if not z1 or not y1:
        return _INF
    p = c.p
    yy, zz = y1 * y1 % p, z1 * z1 % p
    s, m = 4 * x1 * yy % p, (3 * x1 * x1 + c.a * zz * zz) % p
    x3 = (m * m - 2 * s) % p
    return x3, (m * (s - x3) - 8 * yy * yy) % p, 2 * y1 * z1 % p


def _ec_add(q1: _Jacobian, q2: _Jacobian, c: SM2Curve) -> _Jacobian:
    (x1, y1, z1), (x2, y2, z2) = q1, q2
    if not z1:
        return q2
    if not z2:
        return q1
    p = c.p
    z1z1, z2z2 = z1 * z1 % p, z2 * z2 % p
    u1, u2, s1, s2 = x1 * z2z2 % p, x2 * z1z1 % p, y1 * z2 * z2z2 % p, y2 * z1 * z1z1 % p
    h, r = (u2 - u1) % p, (s2 - s1) % p
    if not h:
        return _ec_double(q1, c) if not r else _INF
    hh = h * h % p
    hhh, v = h * hh % p, u1 * hh % p
    x3 = (r * r - hhh - 2 * v) % p
    return x3, (r * (v - x3) - s1 * hhh) % p, h * z1 * z2 % p


def _sm2_za(public_key: bytes, user_id: bytes, c: SM2Curve) -> bytes:
    """ZA = SM3(ENTL || ID || a || b || xG || yG || xA || yA), every field element as 32 bytes."""
    fields = b"".join(v.to_bytes(32, "big") for v in (c.a, c.b, c.gx, c.gy))
    return _sm3((len(user_id) * 8).to_bytes(2, "big") + user_id + fields + public_key[1:]).digest()


def sm2_verify(public_key: bytes, message: bytes, signature: bytes, user_id: bytes = SM2_DEFAULT_ID,
               curve: SM2Curve = SM2_CURVE) -> bool:
    """GB/T 32918.2 §7.1: accept r || s over `message` by the key 0x04 || x || y, with ZA over `user_id`."""
    if len(public_key) != 65 or public_key[0] != 4 or len(signature) != 64 or len(user_id) >= 8192:
        return False
    x, y = int.from_bytes(public_key[1:33], "big"), int.from_bytes(public_key[33:], "big")
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    n = curve.n
    if not (curve.on_curve(x, y) and 1 <= r < n and 1 <= s < n):          # B1, B2 (and the key is a curve point)
        return False
    e = int.from_bytes(_sm3(_sm2_za(public_key, user_id, curve) + message).digest(), "big")  # B3, B4
    t = (r + s) % n                                                         # B5
    if t == 0:
        return False
    g, q = (curve.gx, curve.gy, 1), (x, y, 1)                               # B6: s·G + t·PA, both scalars at once
    both, acc = _ec_add(g, q, curve), _INF
    for i in reversed(range(max(s.bit_length(), t.bit_length()))):
        acc = _ec_double(acc, curve)
        bits = (s >> i & 1, t >> i & 1)
        if bits != (0, 0):
            acc = _ec_add(acc, both if bits == (1, 1) else g if bits[0] else q, curve)
    x1, _, z1 = acc
    if not z1:
        return False
    x1 = x1 * pow(z1 * z1 % curve.p, -1, curve.p) % curve.p
    return (e + x1) % n == r                                                # B7


# ---- verifier keys -----------------------------------------------------------------------------------------------

ED25519_TYPE = b"\x01"
SM2_TYPE = b"\xffhv-sm2"
_KEY_TYPES = {"ed25519": ED25519_TYPE, "sm2": SM2_TYPE}
# What each key type implies for the export it signs: (signature, tree and file hash).
KEY_ALGORITHMS = {"ed25519": ("ed25519", "sha256"), "sm2": ("sm2-sm3", "sm3")}


def note_key_id(name: str, public_key: bytes, kind: str = "ed25519") -> bytes:
    """C2SP signed-note key id: SHA-256(name || 0x0A || type || key)[:4] for Ed25519; SM3 of the same for SM2 (so the
    SM suite computes no SHA-256; the key id is an identifier, which C2SP only recommends a hash for)."""
    data = name.encode("utf-8") + b"\n" + _KEY_TYPES[kind] + public_key
    return (_sm3 if kind == "sm2" else _sha256)(data).digest()[:4]


@dataclasses.dataclass(frozen=True)
class VerifierKey:
    name: str
    key_id: bytes
    public_key: bytes
    kind: str = "ed25519"  # "ed25519" | "sm2"

    def __str__(self) -> str:
        raw = _KEY_TYPES[self.kind] + self.public_key
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(raw).decode('ascii')}"

    @property
    def hash_name(self) -> str:
        """The hash of the tree, file hashes and manifest this key signs: "sha256" (Ed25519) or "sm3" (SM2)."""
        return KEY_ALGORITHMS[self.kind][1]

    @property
    def algorithms(self) -> dict[str, str]:
        signature, hashed = KEY_ALGORITHMS[self.kind]
        return {"signature": signature, "tree_hash": hashed, "file_hash": hashed}


def parse_vkey(text: str) -> VerifierKey:
    """A C2SP verifier key of type Ed25519 or SM2; the key id must match the name and key."""
    name, _, rest = text.partition("+")
    key_id_hex, _, key64 = rest.partition("+")
    _check_name(name)
    if not re.fullmatch(r"[0-9a-fA-F]{8}", key_id_hex):
        raise VerificationError("vkey: key id is 8 hex digits")
    raw = _b64(key64, "vkey")
    if len(raw) == 33 and raw[:1] == ED25519_TYPE:
        kind, public = "ed25519", raw[1:]
        try:
            Ed25519PublicKey.from_public_bytes(public)
        except ValueError:
            raise VerificationError("vkey: not an Ed25519 public key") from None
    elif len(raw) == len(SM2_TYPE) + 65 and raw.startswith(SM2_TYPE):
        kind, public = "sm2", raw[len(SM2_TYPE):]
        x, y = int.from_bytes(public[1:33], "big"), int.from_bytes(public[33:], "big")
        if public[0] != 4 or not SM2_CURVE.on_curve(x, y):
            raise VerificationError("vkey: not an SM2 public key (uncompressed point on the GB/T 32918.5 curve)")
    else:
        raise VerificationError("vkey: only Ed25519 (type 0x01, 32 bytes) and SM2 (type 0xff 'hv-sm2', 65 bytes) "
                                "keys are supported")
    if note_key_id(name, public, kind) != bytes.fromhex(key_id_hex):
        raise VerificationError("vkey: key id does not match name and key")
    return VerifierKey(name, bytes.fromhex(key_id_hex), public, kind)


def open_note(text: str | bytes, vkey: VerifierKey | str) -> str:
    """The body of a signed note, once a signature by `vkey` over it verifies. Raises VerificationError otherwise."""
    key = parse_vkey(vkey) if isinstance(vkey, str) else vkey
    try:
        text = text.decode("utf-8") if isinstance(text, (bytes, bytearray)) else text
        text.encode("utf-8")
    except UnicodeError:
        raise VerificationError("note: not UTF-8") from None
    if any(c < " " and c != "\n" for c in text):
        raise VerificationError("note: control character")
    split = text.rfind("\n\n")
    body, sigs = text[:split + 1], text[split + 2:]
    if split < 0 or not sigs.endswith("\n"):
        raise VerificationError("note: no signature block after a blank line")
    lines, verified = sigs[:-1].split("\n"), False
    if len(lines) > 100:
        raise VerificationError("note: more than 100 signature lines")
    for line in lines:
        name, _, sig64 = line.removeprefix(_SIG_PREFIX).partition(" ")
        if not line.startswith(_SIG_PREFIX) or not sig64:
            raise VerificationError(f"note: not a signature line: {line[:80]!r}")
        _check_name(name)
        sig = _b64(sig64, "note signature")
        if len(sig) < 5:
            raise VerificationError("note: signature too short")
        if name == key.name and sig[:4] == key.key_id:
            try:
                if len(sig) != 68:
                    raise InvalidSignature
                if key.kind == "sm2":
                    if not sm2_verify(key.public_key, body.encode("utf-8"), sig[4:]):
                        raise InvalidSignature
                else:
                    Ed25519PublicKey.from_public_bytes(key.public_key).verify(sig[4:], body.encode("utf-8"))
            except InvalidSignature:
                raise VerificationError(f"note: invalid signature by {key.name}") from None
            verified = True
    if not verified:
        raise VerificationError(f"note: no signature by {key.name}+{key.key_id.hex()}")
    return body


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...]
    body: str


def parse_checkpoint(text: str) -> Checkpoint:
    """A checkpoint from its body, or from a whole note (signatures are then dropped UNVERIFIED: use verify_note)."""
    if "\n\n" in text:
        text = text[:text.rfind("\n\n") + 1]
    lines = text[:-1].split("\n") if text.endswith("\n") else []
    if len(lines) < 3 or not lines[0] or not all(lines[3:]):
        raise VerificationError("checkpoint: need origin, size and root lines, and no empty line")
    if not re.fullmatch(r"0|[1-9][0-9]{0,19}", lines[1]) or int(lines[1]) > _MAX_U64:
        raise VerificationError("checkpoint: tree size is a decimal u64 without leading zeros")
    root = _b64(lines[2], "checkpoint root")
    if len(root) != 32:
        raise VerificationError("checkpoint: root hash is 32 bytes")
    return Checkpoint(lines[0], int(lines[1]), root, tuple(lines[3:]), text)


def verify_note(text: str | bytes, vkey: VerifierKey | str) -> Checkpoint:
    """A checkpoint whose signed note verifies under `vkey`."""
    return parse_checkpoint(open_note(text, vkey))


def claims_signer(text: str, vkey: VerifierKey | str) -> bool:
    """Whether a note carries a signature line naming `vkey` (name and key id) — NOT a verification: only for picking
    which stored notes to verify or export."""
    key = parse_vkey(vkey) if isinstance(vkey, str) else vkey
    prefix = f"{_SIG_PREFIX}{key.name} "
    for line in text[text.rfind("\n\n") + 2:].split("\n"):
        if line.startswith(prefix):
            try:
                if base64.b64decode(line[len(prefix):], validate=True)[:4] == key.key_id:
                    return True
            except (binascii.Error, ValueError):
                continue
    return False


# ------------------------------------------------------------------------------------------------ export bundle

@dataclasses.dataclass
class Report:
    """What verify_bundle found: ok only when problems is empty; events = complete event lines read; tree_size and
    checkpoints from the valid checkpoints; key = the vkey used, key_pinned = whether the caller supplied it;
    algorithms = what the export was checked with (signature, tree_hash, file_hash, event_hash)."""
    ok: bool
    problems: list[str]
    events: int = 0
    tree_size: int = 0
    checkpoints: int = 0
    key: str = ""
    key_pinned: bool = True
    notes: list[str] = dataclasses.field(default_factory=list)
    algorithms: dict[str, Any] = dataclasses.field(default_factory=dict)


class _Problems(list[str]):
    """Problems of one kind; stops growing (but keeps counting) so a shifted file cannot flood memory."""
    dropped = 0

    def add(self, message: str) -> None:
        if len(self) < _MAX_PROBLEMS:
            self.append(message)
        else:
            self.dropped += 1


def _read(d: str, name: str) -> bytes | None:
    try:
        with open(os.path.join(d, name), "rb") as f:
            return f.read()
    except OSError:
        return None


def _file_digest(path: str, alg: str = "sha256") -> str | None:
    digest = _hash_fn(alg)()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _check_leaves(leaves: bytes, first_leaf: int, out: _Problems) -> dict[int, tuple[int, bytes]]:
    """Gapless seq per chain over all of leaves.bin. Returns, per chain, (seq, hash hex) of its last leaf before
    first_leaf: the leaf the first exported event of that chain must link to."""
    expect: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, (chain, seq) in enumerate(struct.iter_unpack(">HQ32x", leaves)):
        if expect.get(chain, 0) != seq:
            out.add(f"leaves.bin: leaf {i} is chain {chain} seq {seq}, expected seq {expect.get(chain, 0)}")
        expect[chain] = seq + 1
        if i < first_leaf:
            last[chain] = i
    return {c: (_LEAF.unpack_from(leaves, i * 42)[1], leaves[i * 42 + 10:i * 42 + 42].hex().encode())
            for c, i in last.items()}


def _who(canonical: bytes) -> str:
    try:
        event = json.loads(canonical)
        return f" (chain {int(event['chain'])} seq {int(event['seq'])})"
    except Exception:  # noqa: BLE001 - only labels a line already known to be bad
        return ""


def _check_events(path: str, leaves: bytes, first_leaf: int, before: dict[int, tuple[int, bytes]], out: _Problems,
                  strict: bool, versions: set[int] | None = None) -> int:
    """Each event line against its own hash, its chain and its leaf; returns the number of complete lines. The event
    versions met (1 and/or 2) are added to `versions`.

    chain, seq and prev_hash are read where the sorted-key encoding puts them: outside strings the byte sequences
    searched for can only be keys (inside a JSON string every '"' is escaped), so a canonical event is read exactly.
    The common case costs one hash, a few finds and comparisons (this loop is the verifier's hot path); the rest only
    names what is wrong."""
    heads: dict[int, tuple[int, bytes]] = {}
    at, zero, pack = first_leaf - 1, (-1, ZERO_HASH_HEX.encode()), _LEAF.pack
    versions = set() if versions is None else versions
    v1, v2, sm3 = b',"v":1}', b',"v":2}', _sm3
    with open(path, "rb") as f:
        for line in f:
            at += 1
            if line[-76:-67] != b',"hash":"' or line[:9] != b'{"event":' or line[-3:] != b'"}\n':
                if not line.endswith(b"\n"):
                    out.add(f"events.jsonl truncated: the line of leaf {at} has no newline")
                    return at - first_leaf
                out.add(f"event at leaf {at}: malformed line")
                continue
            c, stated = line[9:-76], line[-67:-3]
            if c.endswith(v1):
                digest = _sha256(EVENT_DOMAIN + c).digest()
                versions.add(1)
            elif c.endswith(v2):
                digest = sm3(EVENT_DOMAIN_V2 + c).digest()
                versions.add(2)
            else:
                out.add(f"event at leaf {at}{_who(c)}: not a v 1 or v 2 event")
                continue
            hexed = digest.hex().encode()
            a = c.find(b',"chain":') + 9
            b = c.find(b',"client_addr":', a)
            p = c.find(b',"prev_hash":"', b) + 14
            s = c.find(b',"seq":', p) + 7
            t = c.find(b',"time":"', s)
            chain_text, seq_text = c[a:b], c[s:t]
            if a < 9 or b < 0 or p < 14 or s < 7 or t < 0 or not chain_text.isdigit() or not seq_text.isdigit() or (
                    strict and not _EVENT_RE.fullmatch(c)):
                problem = "hash mismatch" if hexed != stated else "not the canonical encoding of a format-1 event"
                out.add(f"event at leaf {at}{_who(c)}: {problem}")
                continue
            chain, seq, prev = int(chain_text), int(seq_text), c[p:p + 64]
            head = heads.get(chain) or before.get(chain, zero)
            heads[chain] = (seq, stated)
            o = at * LEAF_SIZE
            if (hexed == stated and seq == head[0] + 1 and prev == head[1] and chain <= 0xFFFF and seq <= _MAX_U64
                    and leaves[o:o + 42] == pack(chain, seq) + digest):
                continue
            who = f"event at leaf {at} (chain {chain} seq {seq})"
            if hexed != stated:
                out.add(f"{who}: hash mismatch")
            elif chain > 0xFFFF or seq > _MAX_U64:
                out.add(f"{who}: chain or seq out of range")
            elif seq != head[0] + 1:
                out.add(f"gap in seq: chain {chain} expected {head[0] + 1} got {seq} (event at leaf {at})")
            elif prev != head[1]:
                out.add(f"{who}: chain link broken, prev_hash is not the hash of seq {seq - 1}")
            elif o + 42 > len(leaves):
                out.add(f"{who}: beyond leaves.bin ({len(leaves) // LEAF_SIZE} leaves)")
            elif leaves[o:o + 10] != pack(chain, seq):
                c, s = _LEAF.unpack_from(leaves, o)
                out.add(f"{who}: leaves.bin has chain {c} seq {s} here (event missing, inserted or reordered)")
            else:
                out.add(f"{who}: hash differs from leaves.bin")
    return at + 1 - first_leaf


def _roots_at(leaf_hashes: list[bytes], sizes: set[int], alg: str = "sha256") -> dict[int, bytes]:
    """MTH of every prefix size in one pass: keep, level by level, only the perfect subtrees the sizes are made of
    (for each set bit h of size m, the subtree at index (m >> h) - 1 of level h), then fold them right to left."""
    want = {(h, (m >> h) - 1) for m in sizes for h in range(m.bit_length()) if m >> h & 1}
    found, level, height = {}, leaf_hashes, 0
    while level:
        found.update({(h, i): level[i] for h, i in want if h == height and i < len(level)})
        level, height = parent_level(b"".join(level), alg), height + 1
    roots = {}
    for m in sizes:
        parts = [found[(h, (m >> h) - 1)] for h in reversed(range(m.bit_length())) if m >> h & 1]
        root = parts.pop() if parts else empty_root(alg)
        while parts:
            root = node_hash(parts.pop(), root, alg)
        roots[m] = root
    return roots


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _check_manifest(d: str, key: VerifierKey, out: _Problems) -> dict[str, Any]:
    """The manifest if it is well formed; its signature and the file hashes it lists are checked into `out`.
    Hashes are the key's (SHA-256 for Ed25519, SM3 for SM2)."""
    raw, sig, alg = _read(d, "manifest.json"), _read(d, "manifest.sig"), key.hash_name
    if raw is None or sig is None:
        out.add(f"missing file: {'manifest.json' if raw is None else 'manifest.sig'}")
    else:
        try:
            if open_note(sig, key) != f"{MANIFEST_NOTE_TAG}\n{_hash_fn(alg)(raw).hexdigest()}\n":
                out.add("manifest.sig: signed hash is not the hash of manifest.json")
        except VerificationError as exc:
            out.add(f"manifest.sig: {exc}")
    manifest = _json_or_none(raw or b"")
    types = {"format": str, "origin": str, "first_leaf": int, "event_count": int, "tree_size": int, "files": dict}
    if not isinstance(manifest, dict) or any(type(manifest.get(k)) is not t for k, t in types.items()) \
            or manifest["format"] != EXPORT_FORMAT or min(manifest["first_leaf"], manifest["event_count"]) < 0:
        out.add("manifest.json: not an hv-audit-export/1 manifest")
        return {}
    declared = manifest.get("algorithms")
    if declared is None and key.kind != "ed25519":
        out.add("manifest: does not say which algorithms it uses (\"algorithms\")")
    elif declared is not None and (not isinstance(declared, dict) or any(
            declared.get(k) != v for k, v in key.algorithms.items())):
        out.add(f"manifest: algorithms {declared!r} are not those of the key ({key.algorithms})")
    for name in EXPORT_FILES:
        digest = _file_digest(os.path.join(d, name), alg) if os.path.isfile(os.path.join(d, name)) else None
        if digest is None:
            out.add(f"missing file: {name}")
        elif manifest["files"].get(name) != digest:
            out.add(f"manifest: hash mismatch for {name}")
    return manifest


def _read_checkpoints(d: str, key: VerifierKey, out: _Problems) -> list[Checkpoint]:
    raw = _read(d, "checkpoints.txt")
    try:
        notes = (raw or b"").decode("utf-8").split("\n" + CHECKPOINT_SEPARATOR)
    except UnicodeError:
        notes = [""]
    checkpoints: list[Checkpoint] = []
    for i, note in enumerate(notes, 1):
        try:
            cp = verify_note(note + "\n" if i < len(notes) else note, key)
        except VerificationError as exc:
            out.add(f"checkpoint {i}: {exc}")
            continue
        if checkpoints and (cp.size <= checkpoints[-1].size or cp.origin != checkpoints[0].origin):
            out.add(f"checkpoint {i}: tree size not increasing or origin differs")
            continue
        checkpoints.append(cp)
    if not checkpoints:
        out.add("checkpoints.txt: no valid checkpoint")
    return checkpoints


def _check_tree(d: str, cps: list[Checkpoint], leaf_hashes: list[bytes], out: _Problems, alg: str = "sha256") -> None:
    """Checkpoint roots against the roots recomputed from leaves.bin, then each consistency proof."""
    roots, good = _roots_at(leaf_hashes, {c.size for c in cps if c.size <= len(leaf_hashes)}, alg), 0
    for i, cp in enumerate(cps, 1):
        if cp.size > len(leaf_hashes):
            out.add(f"checkpoint {i} (size {cp.size}) beyond leaves.bin ({len(leaf_hashes)} leaves): file truncated")
        elif roots[cp.size] != cp.root:
            out.add(f"checkpoint {i} inconsistent with leaves (size {cp.size}; leaves.bin changed within leaves "
                    f"[{good}, {cp.size}))")
        else:
            good = cp.size
    if cps and cps[-1].size != len(leaf_hashes):
        out.add(f"newest checkpoint (size {cps[-1].size}) does not match leaves.bin ({len(leaf_hashes)} leaves)")
    doc = _json_or_none(_read(d, "proofs.json") or b"")
    entries = doc.get("consistency") if isinstance(doc, dict) else None
    entries = entries if isinstance(entries, list) else []
    for i, (a, b) in enumerate(itertools.pairwise(cps), 1):
        e = entries[i - 1] if i <= len(entries) and isinstance(entries[i - 1], dict) else {}
        listed = e.get("proof")
        listed = listed if isinstance(listed, list) else [None]
        proof = [bytes.fromhex(p) if isinstance(p, str) and _HEX64_RE.fullmatch(p) else b"" for p in listed]
        if (e.get("from"), e.get("to")) != (a.size, b.size) or not verify_consistency(a.size, b.size, proof,
                                                                                      a.root, b.root, alg):
            out.add(f"consistency proof from checkpoint {i} to {i + 1} (size {a.size} -> {b.size}) fails")


def verify_bundle(path: str | os.PathLike[str], vkey: str | None = None, strict: bool = False) -> Report:
    """Check an export directory. Report.problems names single events first, then leaves.bin, the checkpoints, the
    event count and the manifest, so the first problem is the most precise one."""
    d, notes, pinned = os.fspath(path), [], vkey is not None
    events_out, leaves_out, tree_out, count_out, manifest_out = (_Problems() for _ in range(5))
    try:
        if vkey is None:
            vkey = (_read(d, "public_key.txt") or b"").decode("utf-8").strip()
            notes.append("key NOT pinned: taken from public_key.txt inside the export (pin it with --key)")
        key = parse_vkey(vkey)
    except (UnicodeError, VerificationError) as exc:
        return Report(False, [f"verifier key: {exc}"], notes=notes, key_pinned=pinned)
    manifest = _check_manifest(d, key, manifest_out)
    first_leaf = manifest.get("first_leaf", 0)
    try:
        if parse_vkey((_read(d, "public_key.txt") or b"").decode("utf-8").strip()) != key:
            manifest_out.add("public_key.txt is not the pinned key")
    except (UnicodeError, VerificationError):
        manifest_out.add("public_key.txt: missing or not a vkey")
    leaves = _read(d, "leaves.bin") or b""
    if len(leaves) % LEAF_SIZE:
        leaves_out.add(f"leaves.bin truncated: {len(leaves)} bytes is not a multiple of {LEAF_SIZE}")
        leaves = leaves[:len(leaves) - len(leaves) % LEAF_SIZE]
    before = _check_leaves(leaves, first_leaf, leaves_out)
    versions: set[int] = set()
    try:
        count = _check_events(os.path.join(d, "events.jsonl"), leaves, first_leaf, before, events_out, strict,
                              versions)
    except OSError:
        count = 0
        count_out.append("events.jsonl: missing or unreadable")

    if manifest and count != manifest["event_count"]:
        count_out.append(f"events.jsonl {'truncated: ' if count < manifest['event_count'] else 'has '}{count} "
                         f"events, the manifest says {manifest['event_count']}")
    event_hashes = sorted(EVENT_FORMATS[v] for v in versions)
    declared = manifest.get("algorithms") if manifest else None
    if isinstance(declared, dict) and declared.get("event_hash") != event_hashes:
        manifest_out.add(f"manifest: event_hash {declared.get('event_hash')!r} but the events use {event_hashes}")
    cps = _read_checkpoints(d, key, tree_out)
    alg = key.hash_name
    h = _hash_fn(alg)
    _check_tree(d, cps, [h(b"\x00" + x).digest() for (x,) in struct.iter_unpack("42s", leaves)], tree_out, alg)
    if cps and first_leaf + count > cps[-1].size:
        tree_out.add(f"last checkpoint (size {cps[-1].size}) does not cover the events up to leaf {first_leaf + count}")
    if cps and manifest and (manifest["tree_size"], manifest["origin"]) != (cps[-1].size, cps[-1].origin):
        manifest_out.add("manifest: tree_size or origin differs from the newest checkpoint")
    problems = [*events_out, *leaves_out, *tree_out, *count_out, *manifest_out]
    dropped = sum(p.dropped for p in (events_out, leaves_out, tree_out, manifest_out))
    if dropped:
        problems.append(f"... and {dropped} more problems")
    return Report(not problems, problems, count, cps[-1].size if cps else 0, len(cps), str(key), pinned, notes,
                  {**key.algorithms, "event_hash": event_hashes})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audit.verify", description="Verify an audit export offline.")
    parser.add_argument("dir")
    parser.add_argument("--key", help="the vkey you were given out of band (the string, or a file holding it); "
                        "required")
    parser.add_argument("--strict", action="store_true", help="also check every event line is exactly the canonical "
                        "encoding (slower)")
    args = parser.parse_args(argv)
    key = args.key
    if not key:  # the export's own public_key.txt proves nothing: anyone can sign an export and ship their key
        print("error: --key is required: verify against the key you were given out of band (the vault's operator "
              "prints it with `healthvault audit public-key`; auditors read GET /v1/audit/public-key), never the "
              "public_key.txt inside the export", file=sys.stderr)
        return 2
    if os.path.isfile(key):
        with open(key, encoding="utf-8") as f:
            key = f.read().strip()
    report = verify_bundle(args.dir, key, args.strict)
    print(f"export:      {args.dir}")
    print(f"key:         {report.key or '-'} ({'pinned' if report.key_pinned else 'NOT PINNED'})")
    for note in report.notes:
        print(f"note:        {note}")
    print(f"events:      {report.events}")
    print(f"tree size:   {report.tree_size} ({report.checkpoints} checkpoints)")
    if report.algorithms:
        a = report.algorithms
        print(f"algorithms:  signature {a['signature']}, tree and files {a['tree_hash']}, "
              f"events {' + '.join(a['event_hash']) or '-'}")
    print(f"result:      {'VERIFIED' if report.ok else f'FAILED ({len(report.problems)} problems)'}")
    if not report.ok:
        print(f"FIRST BAD: {report.problems[0]}")
        for problem in report.problems[1:]:
            print(f"  also: {problem}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
