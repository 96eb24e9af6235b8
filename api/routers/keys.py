"""Key status and the two-person root rotation over HTTP.

Owns only the HTTP shape; every decision (who may look, who may request, that the approver differs from the
requester) is made by vault.keys (status, rotation) through the gate, and every call is audited there. Never returns
key material.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Ctx, CurrentIdentity, VaultDep
from api.schemas import contract
from api.schemas.keys import KeyStatusOut, RotationOut, RotationPage, RotationRequestIn
from vault.keys import rotation
from vault.keys import status as keystatus

router = APIRouter(tags=["keys"])


@router.get("/v1/keys/status", response_model=KeyStatusOut)
def key_status(identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> KeyStatusOut:
    """Root and KEK versions with what each wraps, what waits for a rewrap, and the latest rewrap job's progress."""
    with vault.session() as session:
        status = keystatus.status(session, vault, identity=identity, ctx=ctx)
    return contract(KeyStatusOut, status)


@router.get("/v1/keys/rotations", response_model=RotationPage)
def list_rotations(identity: CurrentIdentity, vault: VaultDep, ctx: Ctx,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50) -> RotationPage:
    with vault.session() as session:
        views = rotation.list_rotations(session, vault, identity=identity, ctx=ctx, limit=limit)
    return RotationPage(items=[contract(RotationOut, v) for v in views])


@router.get("/v1/keys/rotations/{request_id}", response_model=RotationOut)
def get_rotation(request_id: str, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> RotationOut:
    with vault.session() as session:
        return contract(RotationOut, rotation.get_rotation(session, vault, identity=identity, ctx=ctx,
                                                         request_id=request_id))


@router.post("/v1/keys/rotations", status_code=201, response_model=RotationOut)
def request_rotation(identity: CurrentIdentity, vault: VaultDep, ctx: Ctx,
                     body: RotationRequestIn | None = None) -> RotationOut:
    """A secadmin asks for a new root-key version; it stays pending until a different secadmin approves."""
    with vault.session() as session:
        return contract(RotationOut, rotation.request_root_rotation(session, vault, identity=identity, ctx=ctx))


@router.post("/v1/keys/rotations/{request_id}/approve", response_model=RotationOut)
def approve_rotation(request_id: str, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> RotationOut:
    """A second, different secadmin approves; the rotation runs at once (status `executed`, `new_version` set)."""
    with vault.session() as session:
        return contract(RotationOut, rotation.approve_root_rotation(session, vault, identity=identity, ctx=ctx,
                                                                  request_id=request_id))
