"""Sign-in, sign-out, TOTP enrolment and password change over HTTP. Thin: vault.accounts decides and audits."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import BearerToken, Ctx, CurrentIdentity, VaultDep
from api.schemas.auth import LoginIn, PasswordChangeIn, TokenOut, TotpActivateIn, TotpEnrollIn, TotpEnrollOut
from vault.accounts import service as accounts

router = APIRouter(prefix="/v1/auth", tags=["auth"])


@router.post("/login", response_model=TokenOut)
def login(body: LoginIn, vault: VaultDep, ctx: Ctx) -> TokenOut:
    with vault.session() as session:
        token, expires_in = accounts.login(session, vault, username=body.username, password=body.password, ctx=ctx,
                                           otp=body.otp)
    return TokenOut(access_token=token, expires_in=expires_in)


@router.post("/logout", status_code=204)
def logout(token: BearerToken, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> Response:
    with vault.session() as session:
        accounts.logout(session, vault, token=token, identity=identity, ctx=ctx)
    return Response(status_code=204)


@router.post("/totp/enroll", response_model=TotpEnrollOut)
def totp_enroll(body: TotpEnrollIn, vault: VaultDep, ctx: Ctx) -> TotpEnrollOut:
    with vault.session() as session:
        secret, uri = accounts.totp_enroll(session, vault, username=body.username, password=body.password, ctx=ctx)
    return TotpEnrollOut(secret=secret, otpauth_uri=uri)


@router.post("/totp/activate", status_code=204)
def totp_activate(body: TotpActivateIn, vault: VaultDep, ctx: Ctx) -> Response:
    with vault.session() as session:
        accounts.totp_activate(session, vault, username=body.username, password=body.password, otp=body.otp, ctx=ctx)
    return Response(status_code=204)


@router.post("/password", status_code=204)
def change_password(body: PasswordChangeIn, vault: VaultDep, ctx: Ctx) -> Response:
    with vault.session() as session:
        accounts.change_password(session, vault, username=body.username, password=body.password,
                                 new_password=body.new_password, otp=body.otp, ctx=ctx)
    return Response(status_code=204)
