"""Bodies and answers of /v1/auth: sign-in, TOTP enrolment, password change. API-only: no domain view behind them."""

from __future__ import annotations

from pydantic import BaseModel, Field

from api.schemas import Input


class LoginIn(Input):
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=256)
    otp: str | None = Field(default=None, max_length=16)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth 2 token type, not a secret)
    expires_in: int


class TotpEnrollIn(Input):
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=256)


class TotpActivateIn(TotpEnrollIn):
    otp: str = Field(min_length=6, max_length=8)


class TotpEnrollOut(BaseModel):
    secret: str
    otpauth_uri: str


class PasswordChangeIn(Input):
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=1, max_length=256)
    otp: str | None = Field(default=None, max_length=16)
