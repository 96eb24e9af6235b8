"""Content-Disposition for files the vault hands out: built from a stored name without letting it shape the header.

Owns turning a file name (a patient's own upload name, or one the vault makes up) into `attachment; filename="…";
filename*=UTF-8''…` (RFC 6266 with RFC 8187's UTF-8 form): the last path segment only, no control characters,
quotes, backslashes or semicolons, an ASCII stand-in for old clients and the exact name percent-encoded for the rest.
Never: lets a name end the quoted string, add a header or a parameter, or name a path; returns an empty name.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

MAX_NAME = 150


def _clean(name: str) -> str:
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(c for c in name if (c not in '";' and unicodedata.category(c)[0] not in "CZ") or c == " ")
    return kept.strip(" .")[:MAX_NAME].strip(" .")


def attachment(filename: str | None, *, fallback: str) -> str:
    """The header value for a download named `filename` (or `fallback`, itself a plain ASCII name, when nothing of
    `filename` is left)."""
    name = _clean(filename or "") or fallback
    plain = "".join(c if 32 <= ord(c) < 127 and c != "%" else "_" for c in name)
    if not plain.strip("_."):
        plain = fallback
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"
