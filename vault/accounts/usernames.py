"""Account names: the one normal form under which a username is stored, looked up and compared.

Owns the username rule (NFKC + casefold, 3-64 of a small ASCII alphabet). Pure: no storage, no keys. A change here is
a change of every stored username's meaning, so it needs a migration.
"""

from __future__ import annotations

import re
import unicodedata

from vault.errors import InvalidUsername

_USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{2,63}")


def normalize_username(raw: str) -> str:
    """NFKC + casefold so `Alice`, `alice` and `Ａｌｉｃｅ` are one account name."""
    if not isinstance(raw, str) or len(raw) > 256:
        raise InvalidUsername("Username is too long", extra={"reason": "length"})
    value = unicodedata.normalize("NFKC", raw).strip().casefold()
    value = unicodedata.normalize("NFKC", value)
    if not _USERNAME_RE.fullmatch(value):
        raise InvalidUsername(
            "Username must be 3-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit",
            extra={"reason": "format"},
        )
    return value
