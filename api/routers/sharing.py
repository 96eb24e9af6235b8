"""Grants, what is shared with the caller, and break-glass over HTTP. Thin: vault.sharing decides and audits."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import Ctx, CurrentIdentity, VaultDep
from api.schemas import contract
from api.schemas.sharing import BreakGlassIn, BreakGlassOut, GrantIn, GrantOut, SharedRecordOut
from vault.sharing import receipt
from vault.sharing import service as sharing

router = APIRouter(tags=["sharing"])


@router.post("/v1/grants", status_code=201, response_model=GrantOut)
def create_grant(body: GrantIn, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> GrantOut:
    with vault.session() as session:
        return contract(GrantOut, sharing.create_grant(
            session, vault, identity=identity, ctx=ctx, grantee=body.grantee,
            record_ids=[str(r) for r in body.record_ids], categories=body.categories,
            include_future=body.include_future, actions=body.actions, purpose=body.purpose,
            consult_ref=body.consult_ref, not_before=body.not_before, expires_at=body.expires_at))


@router.get("/v1/grants", response_model=list[GrantOut])
def list_grants(identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> list[GrantOut]:
    with vault.session() as session:
        return [contract(GrantOut, v) for v in sharing.list_grants(session, vault, identity=identity, ctx=ctx)]


@router.get("/v1/grants/{grant_id}/receipt")
def grant_receipt(grant_id: str, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> dict[str, Any]:
    """The signed consent receipt: to the patient who gave the grant, or to its grantee while the grant is live."""
    with vault.session() as session:
        return receipt.get_receipt(session, vault, identity=identity, ctx=ctx, grant_id=grant_id)


@router.delete("/v1/grants/{grant_id}", response_model=GrantOut)
def revoke_grant(grant_id: str, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> GrantOut:
    with vault.session() as session:
        return contract(GrantOut, sharing.revoke_grant(session, vault, identity=identity, ctx=ctx, grant_id=grant_id))


@router.get("/v1/shared", response_model=list[SharedRecordOut])
def shared(identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> list[SharedRecordOut]:
    with vault.session() as session:
        return [contract(SharedRecordOut, s)
                for s in sharing.shared_with_me(session, vault, identity=identity, ctx=ctx)]


@router.post("/v1/breakglass", status_code=201, response_model=BreakGlassOut)
def breakglass(body: BreakGlassIn, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> BreakGlassOut:
    with vault.session() as session:
        claim = sharing.breakglass(session, vault, identity=identity, ctx=ctx, patient_id=str(body.patient_id),
                                   reason=body.reason, otp=body.otp)
        return BreakGlassOut(claim_id=claim.id, patient_id=claim.patient_id, expires_at=claim.expires_at)
