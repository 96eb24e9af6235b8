"""The privacy notice and the patient's consents (PIPL-1) at the edge.

`ConsentItemOut` is the domain's `privacy.ItemState`; `ConsentStateOut` flattens `privacy.ConsentState` (its notice
and derived properties) into the contract's envelope; `NoticeOut` is the notice document's published shape.
"""

from __future__ import annotations

import dataclasses

from pydantic import BaseModel, Field, StrictBool

from api.schemas import Input
from vault.patients import privacy


class ConsentsIn(Input):
    """Separate consent per item on the notice version the client showed; an omitted item is not given (at
    registration) or unchanged (POST /v1/patients/me/consents)."""

    notice_version: str | None = Field(default=None, min_length=1, max_length=32)
    health_data: StrictBool | None = None
    id_number: StrictBool | None = None
    ocr: StrictBool | None = None


@dataclasses.dataclass(frozen=True)
class ConsentItemOut(privacy.ItemState):
    """One consent item as last recorded, and whether it was given on the current notice."""


class NoticeSectionOut(BaseModel):
    item: str
    required: bool
    title: dict[str, str]
    text: dict[str, str]


class NoticeOut(BaseModel):
    version: str
    hash: str = Field(description="SHA-256 (hex) of the notice file; stored with every consent")
    effective_date: str | None = None
    title: dict[str, str]
    summary: dict[str, str] | None = None
    sections: list[NoticeSectionOut]
    rights: dict[str, str] | None = None


class ConsentStateOut(BaseModel):
    notice_version: str
    notice_hash: str
    up_to_date: bool = Field(description="both required items given on the current notice")
    missing: list[str]
    ocr: bool = Field(description="lab sheets are read by OCR")
    items: dict[str, ConsentItemOut | None]
    history: list[ConsentItemOut]

    @classmethod
    def of(cls, state: privacy.ConsentState) -> ConsentStateOut:
        def item(entry: privacy.ItemState | None) -> ConsentItemOut | None:
            return ConsentItemOut(**vars(entry)) if entry is not None else None

        return cls(notice_version=state.notice.version, notice_hash=state.notice.hash, up_to_date=state.up_to_date,
                   missing=state.missing, ocr=state.ocr, items={k: item(v) for k, v in state.items.items()},
                   history=[ConsentItemOut(**vars(e)) for e in state.history])
