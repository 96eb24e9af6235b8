"""Consent receipts: a signed statement of who shared what with whom, why and until when (PIPL art. 23).

Owns the receipt format and its signature. The receipt carries ids, pseudonym-free codes and the SHA-256 of the
purpose text (never the purpose itself, which is PHI-adjacent free text), so it can be handed to the patient or an
assessor and checked offline with the public key. Signing uses kms's single-purpose `consent-receipts` key.
"""

from __future__ import annotations

import base64
import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PURPOSE = "consent-receipts"
FORMAT = "hv-consent-receipt/1"


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
