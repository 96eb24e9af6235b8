"""Records at the edge: `RecordOut` is the domain's `records.RecordView` (its `patient_id` is never serialised);
`RecordPage` is the API's page envelope. Uploads are multipart (api/multipart.py), not a model."""

from __future__ import annotations

import dataclasses

from pydantic import BaseModel

from vault.records import service as records


@dataclasses.dataclass(frozen=True)
class RecordOut(records.RecordView):
    """A record's metadata (and, for a lab sheet, its OCR state and results)."""


class RecordPage(BaseModel):
    items: list[RecordOut]
    next_cursor: str | None
