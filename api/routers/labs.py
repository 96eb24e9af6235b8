"""Lab results over HTTP: corrections, their history, re-running OCR and the patient's trends.

Owns only the HTTP shape; vault.labs (and vault.records for the gate) decide and audit.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import Ctx, CurrentIdentity, VaultDep
from api.schemas import contract
from api.schemas.labs import ExtractionOut, LabCorrectionIn, TrendPointOut
from vault.labs import service as labs
from vault.records import service as records

router = APIRouter(tags=["labs"])


@router.patch("/v1/records/{record_id}/lab-results")
def correct_lab_result(record_id: uuid.UUID, body: LabCorrectionIn, identity: CurrentIdentity, vault: VaultDep,
                       ctx: Ctx) -> dict[str, Any]:
    with vault.session() as session:
        return labs.correct(session, vault, identity=identity, ctx=ctx, record_id=str(record_id), row=body.row,
                            field=body.field, value=body.value)


@router.get("/v1/records/{record_id}/lab-results/history")
def lab_result_history(record_id: uuid.UUID, identity: CurrentIdentity, vault: VaultDep,
                       ctx: Ctx) -> list[dict[str, Any]]:
    with vault.session() as session:
        record, dek = records.get_or_raise(session, vault, identity=identity, ctx=ctx, record_id=str(record_id),
                                           action="lab.read")
        labs.ensure_not_declined(record)
        return labs.history(session, record=record, dek=dek)


@router.post("/v1/records/{record_id}/lab-results/extraction", status_code=202, response_model=ExtractionOut)
def request_extraction(record_id: uuid.UUID, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> ExtractionOut:
    """Queue OCR of this lab sheet again (e.g. after giving the ocr consent later); 409 ocr-declined without it."""
    with vault.session() as session:
        status = labs.request_extraction(session, vault, identity=identity, ctx=ctx, record_id=str(record_id))
    return ExtractionOut(record_id=str(record_id), ocr_status=status)


@router.get("/v1/patients/me/lab-trends", response_model=list[TrendPointOut], tags=["patients"])
def lab_trends(identity: CurrentIdentity, vault: VaultDep, ctx: Ctx,
               code: Annotated[str, Query(min_length=1, max_length=32)]) -> list[TrendPointOut]:
    with vault.session() as session:
        return [contract(TrendPointOut, p) for p in labs.trends(session, vault, identity=identity, ctx=ctx, code=code)]
