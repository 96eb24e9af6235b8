"""Lab results at the edge: the correction body, the extraction answer and `TrendPointOut` (the domain's
`labs.TrendPoint`)."""

from __future__ import annotations

import dataclasses

from pydantic import BaseModel, Field

from api.schemas import Input
from vault.labs import service as labs


class LabCorrectionIn(Input):
    row: int = Field(ge=0, le=1000)
    field: str = Field(max_length=16)
    value: str | float | None = None


class ExtractionOut(BaseModel):
    record_id: str
    ocr_status: str


@dataclasses.dataclass(frozen=True)
class TrendPointOut(labs.TrendPoint):
    """One value of one analyte on one lab sheet."""
