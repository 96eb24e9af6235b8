"""What leaves the vault (issue 16): the FHIR R4 view of a lab report, traceable downloads and the patient's export.

Thin: the services in vault/labs/fhir.py, vault/records/watermark.py and vault/exports/ decide and audit (through
vault/access/gate.py); this module only speaks HTTP.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Depends
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import current_identity, get_ctx, get_vault
from vault.exports import service as exports
from vault.identity import Identity, RequestContext
from vault.labs import fhir
from vault.runtime import Vault

router = APIRouter(tags=["outputs"])
# Annotated dependency aliases (the convention the other routers are moving to).
CurrentIdentity = Annotated[Identity, Depends(current_identity)]
VaultDep = Annotated[Vault, Depends(get_vault)]
Ctx = Annotated[RequestContext, Depends(get_ctx)]

_FHIR_RESPONSE: dict[int | str, dict[str, Any]] = {"200": {"description": "A FHIR R4 Bundle (type collection)",
                          "content": {fhir.MEDIA_TYPE: {"schema": {"type": "object"}}}}}


@router.get("/v1/records/{record_id}/fhir", response_class=Response, responses=_FHIR_RESPONSE)
async def record_fhir(record_id: uuid.UUID, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> Response:
    """The lab values of this report as HL7 FHIR R4 (Patient, DiagnosticReport, one Observation per value)."""

    def work() -> dict:
        with vault.session() as session:
            return fhir.read_bundle(session, vault, identity=identity, ctx=ctx, record_id=str(record_id))

    document = await run_in_threadpool(work)
    return Response(json.dumps(document, ensure_ascii=False), media_type=fhir.MEDIA_TYPE,
                    headers={"cache-control": "no-store"})


class PatientExportIn(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    passphrase: str = pydantic.Field(min_length=exports.MIN_PASSPHRASE, max_length=exports.MAX_PASSPHRASE,
                                     description="Encrypts the ZIP (AES-256); never stored. Needed to open it.")


class PatientExportStarted(pydantic.BaseModel):
    export_id: str
    status: str


class PatientExportStatus(pydantic.BaseModel):
    export_id: str
    status: str  # queued | running | done | failed | downloaded | expired
    done: int
    total: int
    created_at: dt.datetime
    expires_at: dt.datetime
    size_bytes: int | None
    error: str | None


@router.post("/v1/exports", status_code=202, response_model=PatientExportStarted, tags=["patients"])
def start_export(body: PatientExportIn, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> PatientExportStarted:
    """PIPL 45: a copy of all my data, as an AES-256 encrypted ZIP; built in the background (poll the status)."""
    with vault.session() as session:
        view = exports.start(session, vault, identity=identity, ctx=ctx, passphrase=body.passphrase)
    return PatientExportStarted(export_id=view.export_id, status=view.status)


@router.get("/v1/exports/{package_id}", response_model=PatientExportStatus, tags=["patients"])
def export_status(package_id: uuid.UUID, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> PatientExportStatus:
    with vault.session() as session:
        view = exports.get(session, vault, identity=identity, ctx=ctx, export_id=str(package_id))
    return PatientExportStatus(**view.__dict__)


@router.get("/v1/exports/{package_id}/download", response_class=StreamingResponse, tags=["patients"])
def export_download(package_id: uuid.UUID, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> StreamingResponse:
    """The package, once, within 24 hours of being built; 410 afterwards."""
    with vault.session() as session:
        size, chunks = exports.open_download(session, vault, identity=identity, ctx=ctx, export_id=str(package_id))
    return StreamingResponse(chunks, media_type="application/zip", headers={
        "content-length": str(size), "cache-control": "no-store",
        "content-disposition": 'attachment; filename="healthvault-export.zip"'})
