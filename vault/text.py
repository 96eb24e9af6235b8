"""Text from clients made inert: what a title, file name, purpose, reason or name may contain.

Owns one rule for every free-text field a client sends: visible characters and ordinary spaces only. Control
characters (C0 with CR, LF and TAB, DEL, C1), line and paragraph separators and the bidirectional formatting
characters (which can make `exe.pdf` display as `fdp.exe`) are refused with a 422 naming the field, never stripped
silently, so what is stored is what the client saw. The value is never echoed in the error.
"""

from __future__ import annotations

import unicodedata

from vault.errors import InvalidInput

# Bidi embeddings, overrides and isolates, the implicit marks, and the Arabic letter mark.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def is_inert(value: str) -> bool:
    """True when no character could move, hide or break lines of the text around it."""
    return not any(c in _BIDI or unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value)


def inert(value: str, *, field: str, max_length: int, min_length: int = 1) -> str:
    """`value` with surrounding spaces removed, if it is `min_length`..`max_length` inert characters; else 422."""
    value = value.strip()
    if not min_length <= len(value) <= max_length or not is_inert(value):
        raise InvalidInput(f"{field} must be {min_length}-{max_length} characters without control or direction "
                           "characters", extra={"reason": field})
    return value
