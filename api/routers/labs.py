import dataclasses
import uuid

from fastapi import APIRouter, Depends, Query

from api.deps import current_identity, get_ctx, get_vault
from api.schemas import ExtractionOut, LabCorrectionIn, TrendPointOut
from vault.identity import Identity, RequestContext
from vault.labs import service as labs
from vault.records import service as records
from vault.runtime import Vault

router = APIRouter(tags=["labs"])


@router.patch("/v1/records/{record_id}/lab-results")
def correct_lab_result(record_id: uuid.UUID, body: LabCorrectionIn, identity: Identity = Depends(current_identity),
                       vault: Vault = Depends(get_vault), ctx: RequestContext = Depends(get_ctx)) -> dict:
    with vault.session() as session:
        return labs.correct(session, vault, identity=identity, ctx=ctx, record_id=str(record_id), row=body.row,
                            field=body.field, value=body.value)


@router.get("/v1/records/{record_id}/lab-results/history")
def lab_result_history(record_id: uuid.UUID, identity: Identity = Depends(current_identity),
                       vault: Vault = Depends(get_vault), ctx: RequestContext = Depends(get_ctx)) -> list[dict]:
    with vault.session() as session:
        record, dek = records.get_or_raise(session, vault, identity=identity, ctx=ctx, record_id=str(record_id),
                                           action="lab.read")
        labs.ensure_not_declined(record)
        return labs.history(session, record=record, dek=dek)


@router.post("/v1/records/{record_id}/lab-results/extraction", status_code=202, response_model=ExtractionOut)
def request_extraction(record_id: uuid.UUID, identity: Identity = Depends(current_identity),
                       vault: Vault = Depends(get_vault), ctx: RequestContext = Depends(get_ctx)) -> ExtractionOut:
    """Queue OCR of this lab sheet again (e.g. after giving the ocr consent later); 409 ocr-declined without it."""
    with vault.session() as session:
        status = labs.request_extraction(session, vault, identity=identity, ctx=ctx, record_id=str(record_id))
    return ExtractionOut(record_id=str(record_id), ocr_status=status)


@router.get("/v1/patients/me/lab-trends", response_model=list[TrendPointOut], tags=["patients"])
def lab_trends(code: str = Query(..., min_length=1, max_length=32), identity: Identity = Depends(current_identity),
               vault: Vault = Depends(get_vault), ctx: RequestContext = Depends(get_ctx)) -> list[TrendPointOut]:
    with vault.session() as session:
        return [TrendPointOut(**dataclasses.asdict(p))
                for p in labs.trends(session, vault, identity=identity, ctx=ctx, code=code)]
