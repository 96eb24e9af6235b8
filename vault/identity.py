"""Who is calling and from where: the values every gate decision and audit event is made of.

Owns the Identity and RequestContext value types. They carry ids and roles only, never names or PHI.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Identity:
    account_id: str
    role: str
    patient_id: str | None = None


ANONYMOUS = Identity(account_id="anonymous", role="anonymous")


@dataclasses.dataclass(frozen=True)
class RequestContext:
    request_id: str | None = None
    client_addr: str | None = None
    user_agent: str | None = None
