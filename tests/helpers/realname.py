"""A real-name verification provider for tests: a real in-process implementation of
`vault.patients.realname.RealNameProvider` whose "SMS" lands in an outbox the test reads, as a phone would.

Configured like any provider: `realname_provider = "tests.helpers.realname:factory"`; the vault's instance is
`vault.realname`. Codes are 8 digits here (a real SMS code has 6) so a scan for a code never matches by chance.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import secrets
import threading

LIFETIME = dt.timedelta(minutes=5)
MAX_TRIES = 5


@dataclasses.dataclass
class _Challenge:
    phone: str
    code: str
    expires_at: dt.datetime
    tries: int = 0


class SmsOutbox:
    def __init__(self, *, digits: int = 8) -> None:
        self.digits = digits
        self.sent: list[tuple[str, str]] = []  # (phone, code) in the order "sent"
        self._challenges: dict[str, _Challenge] = {}
        self._lock = threading.Lock()

    def start(self, *, phone: str, now: dt.datetime) -> str:
        challenge_id = secrets.token_urlsafe(18)
        code = f"{secrets.randbelow(10 ** self.digits):0{self.digits}d}"
        with self._lock:
            self._challenges[challenge_id] = _Challenge(phone, code, now + LIFETIME)
            self.sent.append((phone, code))
        return challenge_id

    def check(self, challenge_id: str, code: str, *, now: dt.datetime) -> str | None:
        with self._lock:
            challenge = self._challenges.get(challenge_id)
            if challenge is None:
                return None
            challenge.tries += 1
            if now >= challenge.expires_at or challenge.tries > MAX_TRIES:
                del self._challenges[challenge_id]
                return None
            if not hmac.compare_digest(code.encode(), challenge.code.encode()):
                return None
            del self._challenges[challenge_id]  # spent
            return challenge.phone

    def code_for(self, phone: str) -> str:
        """The newest code sent to `phone` (what its owner reads off the screen)."""
        with self._lock:
            return next(code for to, code in reversed(self.sent) if to == phone)


def factory(settings) -> SmsOutbox:
    return SmsOutbox()
