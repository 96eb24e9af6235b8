"""Keyed pseudonyms for the audit trail.

Owns turning account and patient ids into stable HMAC pseudonyms under a dedicated kms key, so the trail links events
of one person without naming them, and destroying a patient's data keys later leaves the chain verifiable while the
events no longer point at a person. It never sees names, ID numbers or any PHI.

pseudonym = hex(MAC(key, kind || 0x00 || id))[:32], MAC = HMAC-SHA-256 in the "aes" suite, HMAC-SM3 in the "sm"
suite, each under its own key (service-key purpose "pseudonym" / "sm:pseudonym"). A vault that changed suite gives a
person two pseudonyms over its life; whoever looks a person up (vault.audit_log) asks for both.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac

PURPOSE = "pseudonym"
SM_PURPOSE = "sm:pseudonym"


def pseudonym(key: bytes, kind: str, value: str, *, sm3: bool = False) -> str:
    """32 hex characters; without the key it cannot be linked back to the id."""
    message = f"{kind}\0{value}".encode()
    if sm3:  # cryptography's OpenSSL, the provider kms.suites.require() checked at start-up
        mac = _hmac.HMAC(bytes(key), hashes.SM3())
        mac.update(message)
        return mac.finalize().hex()[:32]
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]
