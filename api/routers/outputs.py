"""What leaves the vault (issue 16): the FHIR R4 view of a lab report, traceable downloads and the patient's export.

Thin: the services in vault/labs/fhir.py, vault/records/watermark.py and vault/exports/ decide and audit (through
vault/access/gate.py); this module only speaks HTTP.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api.deps import current_identity, get_ctx, get_vault
from vault.identity import Identity, RequestContext
from vault.labs import fhir
from vault.runtime import Vault

router = APIRouter(tags=["outputs"])
# Annotated dependency aliases (the convention the other routers are moving to).
CurrentIdentity = Annotated[Identity, Depends(current_identity)]
VaultDep = Annotated[Vault, Depends(get_vault)]
Ctx = Annotated[RequestContext, Depends(get_ctx)]

_FHIR_RESPONSE = {"200": {"description": "A FHIR R4 Bundle (type collection)",
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
