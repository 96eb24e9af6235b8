"""The signing side of the audit log: C2SP signed notes and tlog checkpoints.

Owns: turning an Ed25519 private key (the "aes" suite) or an SM2 private key (the "sm" suite: kms.sm2.SM2PrivateKey,
GmSSL underneath, SM3 with the default user id) into a note signer (its vkey, its signature lines, the hash its tree
and export files use) and writing checkpoint bodies. Formats are those documented in `audit.verify` (the key id,
the vkey, the note and checkpoint layouts are computed with its helpers, so what is signed here is what the verifier
reads).
Never: stores, loads, logs or returns private key bytes (keys come from kms/ already unwrapped, and only the public
half ever leaves this module); signs a body the verifier would refuse to parse.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit.merkle import MerkleLog
from audit.verify import VerificationError, VerifierKey, note_key_id, parse_checkpoint, parse_vkey

__all__ = ["MerkleLog", "Signer", "make_checkpoint_body"]


class NoteSigningKey(Protocol):
    """An SM2 private key as kms.sm2.SM2PrivateKey shapes it (described here so this module needs no kms import)."""

    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class Signer:
    """Signs note bodies as `— <name> <base64(key id || signature)>` (C2SP signed-note), the signature being Ed25519
    or SM2 (r || s) according to the key."""

    __slots__ = ("_key", "_vkey", "key_id", "kind", "name")

    def __init__(self, name: str, private_key: Ed25519PrivateKey | NoteSigningKey) -> None:
        if isinstance(private_key, Ed25519PrivateKey):
            kind, public = "ed25519", private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        elif callable(getattr(private_key, "sign", None)) and callable(getattr(private_key, "public_key", None)):
            # An SM2 key (duck-typed so this module needs no kms import): public_key() is 0x04 || x || y, which
            # parse_vkey below checks is a point of the SM2 curve; sign(message) returns r || s.
            kind, public = "sm2", bytes(private_key.public_key())
        else:
            raise TypeError("Signer needs an Ed25519PrivateKey or a kms.sm2.SM2PrivateKey")
        vkey = VerifierKey(name, note_key_id(name, public, kind), public, kind)
        self._vkey = parse_vkey(str(vkey))  # checks the name and the key too
        self.name = name
        self.kind = kind
        self.key_id = self._vkey.key_id
        self._key = private_key

    @property
    def hash_name(self) -> str:
        """The hash of the Merkle tree and the export files this signer signs: "sha256" or "sm3"."""
        return self._vkey.hash_name

    def __repr__(self) -> str:
        return f"Signer({self.vkey()!r})"

    def vkey(self) -> str:
        """The verifier key string an assessor pins: `<name>+<key id hex>+<base64(0x01 || public key)>`."""
        return str(self._vkey)

    def verifier_key(self) -> VerifierKey:
        return self._vkey

    def sign_note(self, body: str) -> str:
        """body + blank line + one signature line. The body must end in a newline and, like every note, be UTF-8
        without control characters other than newline."""
        if not isinstance(body, str) or not body.endswith("\n") or body.startswith("\n") or "\n\n" in body:
            raise VerificationError("note body: non-empty, ends with a newline, no blank line")
        if any(c < " " and c != "\n" for c in body):
            raise VerificationError("note body: control character")
        signature = self._key.sign(body.encode("utf-8"))
        if len(signature) != 64:
            raise VerificationError("signer: a note signature is 64 bytes")
        line = base64.b64encode(self.key_id + signature).decode("ascii")
        return f"{body}\n\u2014 {self.name} {line}\n"


def make_checkpoint_body(origin: str, size: int, root: bytes, extensions: Iterable[str] = ()) -> str:
    """`<origin>\\n<size>\\n<base64 root>\\n` + one line per extension (C2SP tlog-checkpoint)."""
    extensions = tuple(extensions)
    if not isinstance(origin, str) or not origin or "\n" in origin:
        raise VerificationError("checkpoint origin: one non-empty line")
    if type(size) is not int or size < 0 or len(root) != 32:
        raise VerificationError("checkpoint: size is a non-negative integer and root 32 bytes")
    if any(not isinstance(e, str) or not e or "\n" in e for e in extensions):
        raise VerificationError("checkpoint extension: one non-empty line each")
    root64 = base64.b64encode(bytes(root)).decode("ascii")
    body = f"{origin}\n{size}\n{root64}\n" + "".join(f"{e}\n" for e in extensions)
    parse_checkpoint(body)  # the verifier's rules are the only rules
    return body
