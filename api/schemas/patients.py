"""Registration, the patient's profile and self-erasure at the edge. `PatientOut` is the domain's `Profile`."""

from __future__ import annotations

import dataclasses
import datetime as dt

from pydantic import BaseModel, Field

from api.schemas import Input
from api.schemas.privacy import ConsentsIn
from vault.patients import service as patients

CHALLENGE_PATTERN = r"^[A-Za-z0-9_.:-]+$"


class RegisterIn(Input):
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=256)
    real_name: str = Field(min_length=1, max_length=64)
    id_number: str = Field(min_length=1, max_length=64)
    phone: str = Field(min_length=1, max_length=32)
    birth_date: dt.date | None = None
    # PIPL-1: separate consents against the privacy notice (GET /v1/privacy-notice); missing → 422 consent-required.
    consents: ConsentsIn | None = None
    # Real-name verification, when the vault has a provider: the challenge sent to `phone` and the code received.
    realname_challenge: str | None = Field(None, min_length=1, max_length=128, pattern=CHALLENGE_PATTERN,
                                           description="From POST /v1/patients/register/challenge")
    realname_code: str | None = Field(None, min_length=4, max_length=12, pattern=r"^[0-9A-Za-z]+$",
                                      description="The code sent to the phone")


class RegisterOut(BaseModel):
    patient_id: str


class ChallengeIn(Input):
    phone: str = Field(min_length=1, max_length=32)


class ChallengeOut(BaseModel):
    """A challenge (e.g. an SMS code) was sent to the phone: register with this id and the code received."""

    challenge_id: str


@dataclasses.dataclass(frozen=True)
class PatientOut(patients.Profile):
    """The caller's own profile, identifiers masked."""


class ErasureIn(Input):
    password: str = Field(min_length=1, max_length=256)
    otp: str | None = Field(default=None, max_length=16)


class ErasureOut(BaseModel):
    """What an erasure did (from `erasure.ErasureReport`, which also tells the CLI whether it had been done before)."""

    erased: bool
    patient_pseudonym: str
    key_versions_destroyed: int
    records_deleted: int
    grants_revoked: int
