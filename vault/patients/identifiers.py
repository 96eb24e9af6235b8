"""Validation, normalisation and masking of personal identifiers.

Owns the rules for resident ID numbers (GB 11643-1999) and mainland mobile numbers (usernames:
`vault.accounts.usernames`). Everything here is pure: no storage, no keys. Digits of any script are folded to ASCII
before validation and blind-indexing, and only ASCII digits pass. Values returned by `normalize_*` are what the blind
index hashes, so a change to them is a data migration. Nothing here may log or echo the value it rejects.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata

from vault.errors import InvalidIdNumber, InvalidPhone

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
# First two digits: provinces, autonomous regions, municipalities, HK/Macau/Taiwan residence permits (GB/T 2260).
_PROVINCES = frozenset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 61 62 63 64 65 71 81 82 83".split()
)
_EARLIEST_BIRTH = dt.date(1890, 1, 1)


def fold_digits(raw: str) -> str:
    """NFKC, then every other decimal digit (Arabic-Indic, Devanagari, full-width, ...) as its ASCII digit.

    Runs before any validation or blind-indexing, so one number written in two scripts is one value (one person can
    never register twice through another script's digits). What is left is checked against ASCII-only patterns."""
    value = unicodedata.normalize("NFKC", raw)
    return "".join(str(unicodedata.decimal(c)) if not c.isascii() and unicodedata.decimal(c, None) is not None else c
                   for c in value)


def _fold(raw: str) -> str:
    """Digits and full-width letters to ASCII, whitespace and separators removed."""
    return re.sub(r"[\s\-]", "", fold_digits(raw))


def normalize_id_number(raw: str, *, today: dt.date | None = None) -> str:
    """Return the canonical 18-character ID number or raise InvalidIdNumber (reason code only, never the value)."""
    if not isinstance(raw, str) or len(raw) > 64:
        raise InvalidIdNumber("ID number must be 18 characters", extra={"reason": "length"})
    value = _fold(raw).upper()
    if not re.fullmatch(r"[0-9]{17}[0-9X]", value):
        raise InvalidIdNumber("ID number must be 17 digits followed by a digit or X", extra={"reason": "format"})
    if value[:2] not in _PROVINCES:
        raise InvalidIdNumber("ID number has an unknown region code", extra={"reason": "region"})
    birth = _birth_date(value)
    today = today or dt.date.today()
    if birth is None or birth < _EARLIEST_BIRTH or birth > today:
        raise InvalidIdNumber("ID number has an impossible birth date", extra={"reason": "birth-date"})
    if check_digit(value[:17]) != value[17]:
        raise InvalidIdNumber("ID number check digit does not match", extra={"reason": "check-digit"})
    return value


def check_digit(first17: str) -> str:
    """GB 11643 ISO 7064 MOD 11-2 check character for the first 17 digits."""
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def _birth_date(value: str) -> dt.date | None:
    try:
        return dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return None


def birth_date_from_id(normalized: str) -> dt.date:
    """Birth date embedded in a normalised ID number."""
    birth = _birth_date(normalized)
    if birth is None:  # pragma: no cover - normalize_id_number guarantees this
        raise InvalidIdNumber(extra={"reason": "birth-date"})
    return birth


def mask_id_number(normalized: str) -> str:
    """`110105********002X`: region kept, birth date and sequence hidden."""
    return normalized[:6] + "*" * 8 + normalized[-4:]


def normalize_phone(raw: str) -> str:
    """Return a mainland mobile number as 11 digits, accepting +86/0086/86 prefixes and separators."""
    if not isinstance(raw, str) or len(raw) > 32:
        raise InvalidPhone("Phone number is too long", extra={"reason": "length"})
    value = re.sub(r"[\s\-().]", "", fold_digits(raw))
    for prefix in ("+86", "0086", "86"):
        if value.startswith(prefix) and len(value) == len(prefix) + 11:
            value = value[len(prefix):]
            break
    if not re.fullmatch(r"1[3-9][0-9]{9}", value):
        raise InvalidPhone("Phone number must be an 11-digit mainland mobile number", extra={"reason": "format"})
    return value


def mask_phone(normalized: str) -> str:
    """`138****8000`."""
    return normalized[:3] + "****" + normalized[-4:]
