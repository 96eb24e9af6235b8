"""Plaintext scanning: the encodings a leaked string could take at rest."""

from __future__ import annotations

import base64
from pathlib import Path


def encodings(value: str) -> dict[str, bytes]:
    """The byte patterns under which `value` would be found: UTF-8, UTF-16 LE/BE, base64 at each alignment, hex."""
    raw = value.encode()
    patterns = {"utf-8": raw, "utf-16-le": value.encode("utf-16-le"), "utf-16-be": value.encode("utf-16-be"),
                "hex": raw.hex().encode(), "HEX": raw.hex().upper().encode()}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)
        # Drop the characters that depend on the padding bytes or on what follows.
        start = (shift * 4 + 2) // 3 + (1 if shift else 0)
        core = encoded[start:-4] if len(encoded) - start > 8 else encoded[start:]
        patterns[f"base64+{shift}"] = core
        patterns[f"base64url+{shift}"] = core.replace(b"+", b"-").replace(b"/", b"_")
    return patterns


def find_in_bytes(blob: bytes, secrets: list[str]) -> list[tuple[str, str]]:
    hits = []
    for secret in secrets:
        for name, pattern in encodings(secret).items():
            if len(pattern) >= 6 and pattern in blob:
                hits.append((secret, name))
    return hits


def scan_tree(root: Path, secrets: list[str]) -> list[tuple[str, str, str]]:
    """(file, secret, encoding) for every hit under root."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits += [(str(path), s, e) for s, e in find_in_bytes(data, secrets)]
    return hits
