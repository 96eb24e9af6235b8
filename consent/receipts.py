"""Consent receipts: a signed statement of who shared what with whom, why and until when (PIPL art. 23).

Owns the receipt format, its signature and the purpose commitment. The receipt carries ids, pseudonyms and codes,
and of the purpose text (PHI-adjacent free text) only a commitment: HMAC-SHA-256 keyed by a random 32-byte salt of
this grant alone (`purpose_commitment`, format /2). The salt is kept sealed with the grant and shown only to the
patient, so the patient can prove later what the purpose was (receipt + purpose + salt, `purpose_matches`) while a
receipt leaked alone gives nothing to test guesses against, however short the purpose. Receipts are handed to the
patient or an assessor and checked offline with the public key; signing uses kms's single-purpose `consent-receipts`
key. Receipts of format /1 (before migration 0010) carry the plain SHA-256 of the purpose and still verify.
Never: puts the purpose, or an unkeyed hash of it, into a new receipt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PURPOSE = "consent-receipts"
FORMAT = "hv-consent-receipt/2"
FORMAT_V1 = "hv-consent-receipt/1"  # purpose_sha256: unsalted, kept only so old receipts still verify and match
SALT_BYTES = 32
COMMITMENT_SCHEME = "hmac-sha256"


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def purpose_commitment(salt: bytes, purpose: str) -> str:
    """`hmac-sha256:<hex>` of the purpose's UTF-8 under this grant's salt (the statement's `purpose_commitment`)."""
    if len(salt) != SALT_BYTES:
        raise ValueError("a purpose salt is 32 bytes")
    return f"{COMMITMENT_SCHEME}:{hmac.new(salt, purpose.encode(), hashlib.sha256).hexdigest()}"


def purpose_matches(statement: dict, purpose: str, salt: bytes | None) -> bool:
    """Whether a verified statement commits to `purpose` (format /2: with the grant's salt; /1: the plain hash)."""
    if statement.get("format") == FORMAT_V1:
        return hmac.compare_digest(statement.get("purpose_sha256", ""), hashlib.sha256(purpose.encode()).hexdigest())
    if salt is None or len(salt) != SALT_BYTES:
        return False
    return hmac.compare_digest(str(statement.get("purpose_commitment", "")), purpose_commitment(salt, purpose))


def _canonical(statement: dict) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(seed: bytes, statement: dict) -> str:
    """The receipt as JSON text: {"statement", "signature" (base64 Ed25519 over its canonical JSON), "public_key"}."""
    key = Ed25519PrivateKey.from_private_bytes(seed[:32])
    body = {"format": FORMAT, **statement}
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return json.dumps({"statement": body, "signature": base64.b64encode(key.sign(_canonical(body))).decode(),
                       "public_key": base64.b64encode(public).decode()}, sort_keys=True)


def verify(receipt: str, public_key_b64: str | None = None) -> dict:
    """The statement if the signature verifies (against a pinned key when given); ValueError otherwise."""
    data = json.loads(receipt)
    key_b64 = public_key_b64 or data["public_key"]
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(key_b64)).verify(
            base64.b64decode(data["signature"]), _canonical(data["statement"]))
    except (InvalidSignature, ValueError, KeyError) as exc:
        raise ValueError("receipt signature does not verify") from exc
    return data["statement"]
