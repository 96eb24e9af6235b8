"""Password hashing (argon2id) and the minimum password policy.

Owns how passwords are checked and stored. Plain passwords exist only inside these calls: never stored, logged or
put in an exception. Unknown usernames still cost one argon2 verification so timing does not reveal which accounts
exist.
"""

from __future__ import annotations

import dataclasses
import functools

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from vault.errors import WeakPassword

MIN_LENGTH = 10
MAX_LENGTH = 256
_COMMON = frozenset(
    {"password", "password1", "password123", "12345678", "123456789", "1234567890", "qwerty123", "admin123",
     "changeme", "letmein", "welcome1", "iloveyou", "abc123456", "p@ssw0rd", "passw0rd", "admin@123", "root1234"}
)


@dataclasses.dataclass(frozen=True)
class PasswordPolicy:
    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 4

    @functools.cached_property
    def _hasher(self) -> PasswordHasher:
        return PasswordHasher(
            time_cost=self.time_cost, memory_cost=self.memory_kib, parallelism=self.parallelism, type=Type.ID
        )

    @functools.cached_property
    def _dummy_hash(self) -> str:
        return self._hasher.hash("dummy-password-for-timing")

    def check(self, password: str, *, username: str) -> None:
        """Raise WeakPassword with a stable reason code when the password is not acceptable."""
        if not isinstance(password, str) or len(password) < MIN_LENGTH:
            raise WeakPassword(f"Password must have at least {MIN_LENGTH} characters", extra={"reason": "too-short"})
        if len(password) > MAX_LENGTH:
            raise WeakPassword(f"Password must have at most {MAX_LENGTH} characters", extra={"reason": "too-long"})
        classes = sum(
            any(test(c) for c in password)
            for test in (str.islower, str.isupper, str.isdigit, lambda c: not c.isalnum())
        )
        if classes < 3:
            raise WeakPassword(
                "Password must mix at least three of: lower case, upper case, digits, symbols",
                extra={"reason": "too-simple"},
            )
        lowered = password.casefold()
        if lowered in _COMMON or username.casefold() in lowered:
            raise WeakPassword("Password is too easy to guess", extra={"reason": "guessable"})

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """Constant-work verification; a missing hash still costs one argon2 run."""
        try:
            return self._hasher.verify(stored_hash or self._dummy_hash, password) and stored_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
