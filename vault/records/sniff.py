"""Content sniffing from bytes.

Owns the decision of what kind a file is. It looks only at the leading bytes; the file name and the client's declared
type are never trusted (they are checked against the sniffed kind elsewhere). Accepted kinds are deliberately few.
"""

from __future__ import annotations

# Enough leading bytes to decide every accepted kind.
SNIFF_BYTES = 32

PDF = "application/pdf"
JPEG = "image/jpeg"
PNG = "image/png"
HEIC = "image/heic"
ACCEPTED = (PDF, JPEG, PNG, HEIC)

_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}

# Declared types that mean "the client does not know": the sniffed kind decides.
_UNDECLARED = {"", "application/octet-stream", "binary/octet-stream"}
_ALIASES = {"image/jpg": JPEG, "image/pjpeg": JPEG, "image/x-png": PNG, "image/heif": HEIC, "application/x-pdf": PDF}


def sniff(head: bytes) -> str | None:
    """Media type of the accepted kind these bytes begin with, or None."""
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return HEIC
    return None


def declared_matches(declared: str | None, sniffed: str) -> bool:
    """True when the client's declared type is absent, generic, or the same kind as the bytes."""
    value = (declared or "").split(";", 1)[0].strip().lower()
    if value in _UNDECLARED:
        return True
    return _ALIASES.get(value, value) == sniffed
