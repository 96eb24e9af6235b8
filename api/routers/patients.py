"""Registration, the patient's own profile and self-erasure over HTTP. Thin: vault.patients decides and audits."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Ctx, CurrentIdentity, VaultDep
from api.schemas import contract
from api.schemas.patients import ChallengeIn, ChallengeOut, ErasureIn, ErasureOut, PatientOut, RegisterIn, RegisterOut
from vault.errors import NotFound
from vault.patients import erasure, privacy, realname
from vault.patients import service as patients

router = APIRouter(prefix="/v1/patients", tags=["patients"])


@router.post("/register", status_code=201, response_model=RegisterOut)
def register(body: RegisterIn, vault: VaultDep, ctx: Ctx) -> RegisterOut:
    with vault.session() as session:
        patient_id = patients.register(session, vault, username=body.username, password=body.password,
                                       real_name=body.real_name, id_number=body.id_number, phone=body.phone,
                                       birth_date=body.birth_date, ctx=ctx,
                                       consents=privacy.Choices(**body.consents.model_dump()) if body.consents
                                       else None, realname_challenge=body.realname_challenge,
                                       realname_code=body.realname_code)
    return RegisterOut(patient_id=patient_id)


@router.post("/register/challenge", status_code=202, response_model=ChallengeOut)
def register_challenge(body: ChallengeIn, vault: VaultDep, ctx: Ctx) -> ChallengeOut:
    """Real-name verification: send a code to the phone to be registered (404 when the vault has no provider)."""
    return ChallengeOut(challenge_id=realname.start_challenge(vault, phone=body.phone, ctx=ctx))


@router.get("/me", response_model=PatientOut)
def me(identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> PatientOut:
    if identity.patient_id is None:
        raise NotFound("This account is not a patient")
    with vault.session() as session:
        profile = patients.get_profile(session, vault, identity=identity, ctx=ctx, patient_id=identity.patient_id)
    return contract(PatientOut, profile)


@router.delete("/me", response_model=ErasureOut)
def erase_me(body: ErasureIn, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> ErasureOut:
    """Erase the caller (crypto-shredding): password again, and the TOTP code if enrolled. Cannot be undone."""
    with vault.session() as session:
        report = erasure.erase_self(session, vault, identity=identity, ctx=ctx, password=body.password, otp=body.otp)
    return ErasureOut(erased=True, patient_pseudonym=report.patient_pseudonym,
                      key_versions_destroyed=report.key_versions_destroyed, records_deleted=report.records_deleted,
                      grants_revoked=report.grants_revoked)
