"""Real-name verification (实名认证) at registration: the provider seam, and the proof registration asks for.

Owns the interface a verification provider implements (`RealNameProvider`: send a challenge to a phone, say whether
a code answers it), loading the configured one (`realname_provider`: "none", the default, or an import path
"package.module:factory", the factory called with the Settings), starting a challenge (rate limited per client and
per phone, like every door that takes guesses) and the check registration makes before it answers anything about
the ID number: with a provider configured, a registration must carry a challenge the provider says was answered with
the right code, for the very phone being registered, or it is refused (403 `realname-unverified`, audited as a denied
`patient.register`, counted toward the denial-burst alert) — so the "already registered" answer (409) is only given to
a caller who proved control of a phone. No SMS vendor ships with the vault; tests use tests/helpers/realname.py.
Never: logs, audits or stores a code or a phone number; compares a code or phone in variable time (providers compare
codes with `hmac.compare_digest`, the vault compares the phone the same way); lets a provider failure register anyone.
"""

from __future__ import annotations

import datetime as dt
import hmac
import importlib
import logging
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from sqlalchemy.orm import Session

from vault.access import gate, ratelimit
from vault.errors import NotFound, RealNameUnavailable, RealNameUnverified
from vault.identity import Identity, RequestContext
from vault.patients.identifiers import normalize_phone

if TYPE_CHECKING:
    from vault.runtime import Vault
    from vault.settings import Settings

NONE = "none"
START_SCOPE = "realname"  # rate-limit buckets: challenges sent per phone, codes tried per phone
CHECK_SCOPE = "realname-check"
log = logging.getLogger("healthvault.realname")


@runtime_checkable
class RealNameProvider(Protocol):
    """A real-name verification service (an SMS code to the phone, or an operator's identity check).

    `start` sends a challenge to `phone` (11 normalised digits) and returns an opaque challenge id (no phone, code or
    other personal data in it; at most 128 characters of [A-Za-z0-9_.:-]). `check` returns the phone the challenge
    was sent to when `code` answers it — once: an answered challenge is spent — and None otherwise (wrong code, unknown
    or expired challenge, too many tries on it). Implementations cap the tries per challenge, compare codes in
    constant time and keep codes out of their logs. Either may raise when the service is unreachable."""

    def start(self, *, phone: str, now: dt.datetime) -> str: ...

    def check(self, challenge_id: str, code: str, *, now: dt.datetime) -> str | None: ...


def load(settings: Settings) -> RealNameProvider | None:
    """The configured provider (None when off); a wrong import path or factory stops start-up with a clear error."""
    spec = settings.realname_provider
    if spec == NONE:
        return None
    module_name, _, attribute = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"realname_provider {spec!r}: cannot import {type(exc).__name__}") from None
    provider = factory(settings)
    if not isinstance(provider, RealNameProvider):
        raise ValueError(f"realname_provider {spec!r} did not make a provider (start and check)")
    return provider


def start_challenge(vault: Vault, *, phone: str, ctx: RequestContext) -> str:
    """Send a challenge to `phone` through the provider; its id. NotFound when verification is off; the same answer
    for every valid phone, registered or not."""
    provider = vault.realname
    if provider is None:
        raise NotFound("Real-name verification is not enabled on this vault")
    normalized = normalize_phone(phone)
    ratelimit.check(vault, ctx=ctx, scope=START_SCOPE, target=normalized)
    try:
        return provider.start(phone=normalized, now=vault.clock())
    except Exception as exc:  # noqa: BLE001 - the vendor is away: say so, never why (its text may carry the phone)
        log.warning("real-name challenge not sent: %s", type(exc).__name__)
        raise RealNameUnavailable() from None


def require_control(session: Session, vault: Vault, *, ctx: RequestContext, phone: str, challenge: str | None,
                    code: str | None) -> None:
    """With a provider configured: the caller proved control of `phone` (normalised) with `challenge` and `code`, or
    the registration is refused here, audited, before anything about the ID number is answered."""
    provider = vault.realname
    if provider is None:
        return
    if not challenge or not code:
        _refuse(session, vault, ctx=ctx, reason="realname-missing",
                detail="Prove control of the phone first: POST /v1/patients/register/challenge, then register with "
                       "realname_challenge and the code received as realname_code")
    assert challenge is not None and code is not None  # _refuse raised otherwise
    ratelimit.check(vault, ctx=ctx, scope=CHECK_SCOPE, target=phone, per_client=False)  # the client: counted already
    try:
        verified = provider.check(challenge, code, now=vault.clock())
    except Exception as exc:  # noqa: BLE001 - fail closed: nobody registers while the provider cannot say
        log.warning("real-name challenge not checked: %s", type(exc).__name__)
        raise RealNameUnavailable() from None
    if verified is None or not hmac.compare_digest(verified.encode(), phone.encode()):
        _refuse(session, vault, ctx=ctx, reason="realname-unverified",
                detail="The code does not answer this challenge for this phone number (or the challenge is spent)")


def _refuse(session: Session, vault: Vault, *, ctx: RequestContext, reason: str, detail: str) -> None:
    anonymous = Identity(account_id=f"anonymous:{ctx.client_addr or '-'}", role="anonymous")
    target = gate.Target("patient", None, None, exists=False)
    gate.audit(vault, session, identity=anonymous, ctx=ctx, action="patient.register", target=target,
               outcome="deny", reason=reason)
    gate.alert_on_burst(vault, session, identity=anonymous, ctx=ctx, target=target)
    session.commit()
    raise RealNameUnverified(detail, extra={"reason": reason})
