"""PIPL-1 edge: the privacy notice (public) and the patient's own consents. Thin: vault/patients/privacy.py decides."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Ctx, CurrentIdentity, VaultDep
from api.schemas.privacy import ConsentsIn, ConsentStateOut, NoticeOut
from vault.patients import privacy

router = APIRouter(tags=["privacy"])


@router.get("/v1/privacy-notice", response_model=NoticeOut)
async def privacy_notice(vault: VaultDep) -> NoticeOut:
    """The current notice in Chinese and English, with its version and SHA-256; consent is given against these."""
    notice = privacy.current_notice(vault)
    document = notice.document
    return NoticeOut(version=notice.version, hash=notice.hash, effective_date=document.get("effective_date"),
                     title=document["title"], summary=document.get("summary"), sections=document["sections"],
                     rights=document.get("rights"))


@router.get("/v1/patients/me/consents", response_model=ConsentStateOut, tags=["patients"])
def my_consents(identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> ConsentStateOut:
    with vault.session() as session:
        return ConsentStateOut.of(privacy.view(session, vault, identity=identity, ctx=ctx))


@router.post("/v1/patients/me/consents", response_model=ConsentStateOut, tags=["patients"])
def change_consents(body: ConsentsIn, identity: CurrentIdentity, vault: VaultDep, ctx: Ctx) -> ConsentStateOut:
    """Give (on the current notice version), re-give after a notice change, or withdraw items in one step."""
    with vault.session() as session:
        return ConsentStateOut.of(privacy.change(session, vault, identity=identity, ctx=ctx,
                                                 choices=privacy.Choices(**body.model_dump())))
