"""The output model: LabReport (JSON field names follow the lab-sheets truth format)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

SCHEMA = "healthvault-labreport/v1"


@dataclass
class ResultRow:
    seq: int
    name: str | None
    code: str | None                 # printed abbreviation, else canonical code
    std_code: str | None             # canonical code (dictionary), None when the analyte is unknown
    loinc: str | None
    value: str | None                # as printed, without the flag glyph
    value_num: float | None          # parsed number (None for qualitative/unreadable)
    qual_level: str | None           # neg / trace / 1+ / 2+ / 3+ / pos for qualitative results
    unit: str | None                 # canonical unit
    unit_printed: str | None
    ref_low: float | None
    ref_high: float | None
    ref_text: str | None
    flag: str | None                 # "H" | "L" | None  (printed flag when there is one, else derived)
    flag_printed: str | None
    flag_derived: str | None
    page: int = 1
    bbox: list[float] | None = None  # [x0, y0, x1, y1] in page pixels (points for PDF text)
    confidence: dict = field(default_factory=dict)   # per field, 0..1
    conf: float | None = None        # row confidence (min over fields)
    needs_review: bool = False
    review_reasons: list[str] = field(default_factory=list)


@dataclass
class LabReport:
    header: dict
    results: list[ResultRow]
    pages: int = 1
    source: dict = field(default_factory=dict)          # format, page kinds, preprocessing steps
    needs_review: bool = False
    warnings: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)      # engine, models + sha256, package version
    header_confidence: dict = field(default_factory=dict)
    schema: str = SCHEMA

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)
