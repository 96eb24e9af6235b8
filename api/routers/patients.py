from fastapi import APIRouter, Depends

from api.deps import current_identity, get_ctx, get_vault
from api.schemas import ErasureIn, ErasureOut, PatientOut, RegisterIn, RegisterOut
from vault.errors import NotFound
from vault.identity import Identity, RequestContext
from vault.patients import erasure, privacy
from vault.patients import service as patients
from vault.runtime import Vault

router = APIRouter(prefix="/v1/patients", tags=["patients"])


@router.post("/register", status_code=201, response_model=RegisterOut)
def register(body: RegisterIn, vault: Vault = Depends(get_vault), ctx: RequestContext = Depends(get_ctx)) -> RegisterOut:
    with vault.session() as session:
        patient_id = patients.register(session, vault, username=body.username, password=body.password,
                                       real_name=body.real_name, id_number=body.id_number, phone=body.phone,
                                       birth_date=body.birth_date, ctx=ctx,
                                       consents=privacy.Choices(**body.consents.model_dump()) if body.consents
                                       else None)
    return RegisterOut(patient_id=patient_id)


@router.get("/me", response_model=PatientOut)
def me(identity: Identity = Depends(current_identity), vault: Vault = Depends(get_vault),
       ctx: RequestContext = Depends(get_ctx)) -> PatientOut:
    if identity.patient_id is None:
        raise NotFound("This account is not a patient")
    with vault.session() as session:
        profile = patients.get_profile(session, vault, identity=identity, ctx=ctx, patient_id=identity.patient_id)
    return PatientOut(**profile.__dict__)


@router.delete("/me", response_model=ErasureOut)
def erase_me(body: ErasureIn, identity: Identity = Depends(current_identity), vault: Vault = Depends(get_vault),
             ctx: RequestContext = Depends(get_ctx)) -> ErasureOut:
    """Erase the caller (crypto-shredding): password again, and the TOTP code if enrolled. Cannot be undone."""
    with vault.session() as session:
        report = erasure.erase_self(session, vault, identity=identity, ctx=ctx, password=body.password, otp=body.otp)
    return ErasureOut(erased=True, patient_pseudonym=report.patient_pseudonym,
                      key_versions_destroyed=report.key_versions_destroyed, records_deleted=report.records_deleted,
                      grants_revoked=report.grants_revoked)
