"""PIPL-1 edge: the privacy notice (public) and the patient's own consents. Thin: vault/privacy.py decides."""

import dataclasses

from fastapi import APIRouter, Depends

from api.deps import current_identity, get_ctx, get_vault
from api.schemas import ConsentItemOut, ConsentsIn, ConsentStateOut, NoticeOut
from vault.identity import Identity, RequestContext
from vault.patients import privacy
from vault.runtime import Vault

router = APIRouter(tags=["privacy"])


@router.get("/v1/privacy-notice", response_model=NoticeOut)
async def privacy_notice(vault: Vault = Depends(get_vault)) -> NoticeOut:
    """The current notice in Chinese and English, with its version and SHA-256; consent is given against these."""
    notice = privacy.current_notice(vault)
    document = notice.document
    return NoticeOut(version=notice.version, hash=notice.hash, effective_date=document.get("effective_date"),
                     title=document["title"], summary=document.get("summary"), sections=document["sections"],
                     rights=document.get("rights"))


def _state_out(state: privacy.ConsentState) -> ConsentStateOut:
    def item(entry):
        return ConsentItemOut(**dataclasses.asdict(entry)) if entry is not None else None

    return ConsentStateOut(notice_version=state.notice.version, notice_hash=state.notice.hash,
                           up_to_date=state.up_to_date, missing=state.missing, ocr=state.ocr,
                           items={k: item(v) for k, v in state.items.items()},
                           history=[item(e) for e in state.history])


@router.get("/v1/patients/me/consents", response_model=ConsentStateOut, tags=["patients"])
def my_consents(identity: Identity = Depends(current_identity), vault: Vault = Depends(get_vault),
                ctx: RequestContext = Depends(get_ctx)) -> ConsentStateOut:
    with vault.session() as session:
        return _state_out(privacy.view(session, vault, identity=identity, ctx=ctx))


@router.post("/v1/patients/me/consents", response_model=ConsentStateOut, tags=["patients"])
def change_consents(body: ConsentsIn, identity: Identity = Depends(current_identity),
                    vault: Vault = Depends(get_vault), ctx: RequestContext = Depends(get_ctx)) -> ConsentStateOut:
    """Give (on the current notice version), re-give after a notice change, or withdraw items in one step."""
    with vault.session() as session:
        return _state_out(privacy.change(session, vault, identity=identity, ctx=ctx,
                                         choices=privacy.Choices(**body.model_dump())))
