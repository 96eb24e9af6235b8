"""Key status and the two-person root rotation over HTTP.

Owns only the HTTP shape; every decision (who may look, who may request, that the approver differs from the
requester) is made by vault.keys (status, rotation) through the gate, and every call is audited there. Never returns
key material.
"""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Depends, Query

from api.deps import current_identity, get_ctx, get_vault
from api.schemas import KeyStatusOut, RotationOut, RotationPage, RotationRequestIn
from vault.identity import Identity, RequestContext
from vault.keys import rotation
from vault.keys import status as keystatus
from vault.runtime import Vault

router = APIRouter(tags=["keys"])


def _rotation_out(view: rotation.RotationView) -> RotationOut:
    return RotationOut(**dataclasses.asdict(view))


@router.get("/v1/keys/status", response_model=KeyStatusOut)
def key_status(identity: Identity = Depends(current_identity), vault: Vault = Depends(get_vault),
               ctx: RequestContext = Depends(get_ctx)) -> KeyStatusOut:
    """Root and KEK versions with what each wraps, what waits for a rewrap, and the latest rewrap job's progress."""
    with vault.session() as session:
        status = keystatus.status(session, vault, identity=identity, ctx=ctx)
    return KeyStatusOut(**dataclasses.asdict(status))


@router.get("/v1/keys/rotations", response_model=RotationPage)
def list_rotations(limit: int = Query(50, ge=1, le=500), identity: Identity = Depends(current_identity),
                   vault: Vault = Depends(get_vault), ctx: RequestContext = Depends(get_ctx)) -> RotationPage:
    with vault.session() as session:
        views = rotation.list_rotations(session, vault, identity=identity, ctx=ctx, limit=limit)
    return RotationPage(items=[_rotation_out(v) for v in views])


@router.get("/v1/keys/rotations/{request_id}", response_model=RotationOut)
def get_rotation(request_id: str, identity: Identity = Depends(current_identity), vault: Vault = Depends(get_vault),
                 ctx: RequestContext = Depends(get_ctx)) -> RotationOut:
    with vault.session() as session:
        return _rotation_out(rotation.get_rotation(session, vault, identity=identity, ctx=ctx, request_id=request_id))


@router.post("/v1/keys/rotations", status_code=201, response_model=RotationOut)
def request_rotation(body: RotationRequestIn | None = None, identity: Identity = Depends(current_identity),
                     vault: Vault = Depends(get_vault), ctx: RequestContext = Depends(get_ctx)) -> RotationOut:
    """A secadmin asks for a new root-key version; it stays pending until a different secadmin approves."""
    with vault.session() as session:
        return _rotation_out(rotation.request_root_rotation(session, vault, identity=identity, ctx=ctx))


@router.post("/v1/keys/rotations/{request_id}/approve", response_model=RotationOut)
def approve_rotation(request_id: str, identity: Identity = Depends(current_identity),
                     vault: Vault = Depends(get_vault), ctx: RequestContext = Depends(get_ctx)) -> RotationOut:
    """A second, different secadmin approves; the rotation runs at once (status `executed`, `new_version` set)."""
    with vault.session() as session:
        return _rotation_out(rotation.approve_root_rotation(session, vault, identity=identity, ctx=ctx,
                                                            request_id=request_id))
