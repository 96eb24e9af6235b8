"""Keyed pseudonyms for the audit trail.

Owns turning account and patient ids into stable HMAC pseudonyms under a dedicated kms key, so the trail links events
of one person without naming them, and destroying a patient's data keys later leaves the chain verifiable while the
events no longer point at a person. It never sees names, ID numbers or any PHI.
"""

from __future__ import annotations

import hashlib
import hmac

PURPOSE = "pseudonym"


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """32 hex characters; without the key it cannot be linked back to the id."""
    return hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()[:32]
