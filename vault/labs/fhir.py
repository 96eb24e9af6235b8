"""Lab values as HL7 FHIR R4: one lab report becomes a Bundle (type `collection`) of a minimal Patient, a
DiagnosticReport and one Observation per extracted row.

Owns the mapping (pure functions of a decrypted LabReport dict: `bundle`, `observation`, `ucum_unit`) and the one
gated read that feeds it (`read_bundle`, action `record.read`: a grantee reads it within a view grant like the
record itself; audited by the gate before anything is decrypted).
Never: puts an ID number, phone, the sheet's printed header (name, outpatient number, doctor) or any free text other
than analyte names and printed values into a bundle; gives the patient's name to anyone but the patient; invents a
code: LOINC comes from the analyte table (ocr/analytes.py), units are UCUM only when the OCR unit maps to a known
UCUM spelling (otherwise the printed unit travels as plain `unit` text, without a `system`).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from vault import fields
from vault.errors import Conflict, NotFound
from vault.identity import Identity, RequestContext
from vault.labs import service as labs
from vault.patients import service as patients
from vault.records import service as records

if TYPE_CHECKING:
    from vault.runtime import Vault

MEDIA_TYPE = "application/fhir+json"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
# The vault's own code systems: the analyte table's canonical codes and the OCR's qualitative levels.
LOCAL_ANALYTE = "urn:healthvault:analyte"
LOCAL_QUALITATIVE = "urn:healthvault:qualitative-level"
LAB_REPORT_LOINC = ("11502-2", "Laboratory report")
# China Standard Time: lab sheets print local times without an offset.
SHEET_TZ = dt.timezone(dt.timedelta(hours=8))
_NS = uuid.UUID("6f1d7c8e-2b0a-4c55-9a43-5e1f0b7d2c19")

# OCR canonical unit (ocr/parse.py CANON_UNITS) -> UCUM case-sensitive code. Units not here are sent as text only.
UCUM_UNITS: dict[str, str] = {
    "10^9/L": "10*9/L", "10^12/L": "10*12/L", "g/L": "g/L", "%": "%", "fL": "fL", "pg": "pg", "U/L": "U/L",
    "μmol/L": "umol/L", "mmol/L": "mmol/L", "mg/L": "mg/L", "/μL": "/uL", "mg/dL": "mg/dL", "ng/mL": "ng/mL",
    "pg/mL": "pg/mL", "μg/L": "ug/L", "IU/L": "[IU]/L", "mIU/L": "m[IU]/L", "s": "s", "L/L": "L/L",
    "/HP": "/[HPF]", "/LP": "/[LPF]", "g/dL": "g/dL", "nmol/L": "nmol/L", "pmol/L": "pmol/L",
    "μIU/mL": "u[IU]/mL", "mU/L": "mU/L", "mL/min": "mL/min",
}
_INTERPRETATION_DISPLAY = {"H": "High", "L": "Low", "N": "Normal"}
_COMPARATORS = {"<": "<", "≤": "<=", "<=": "<=", ">": ">", "≥": ">=", ">=": ">="}
_NUMBER = re.compile(r"^\s*(<=|>=|[<>≤≥])?\s*([-+]?\d+(?:\.\d+)?)\s*$")


def ucum_unit(unit: str | None) -> str | None:
    """The UCUM code for an OCR canonical unit, or None when the unit is unknown (or there is none)."""
    if not unit:
        return None
    return UCUM_UNITS.get(unit.replace("µ", "μ"))


def _quantity(value: float, unit: str | None) -> dict:
    quantity: dict[str, Any] = {"value": value}
    code = ucum_unit(unit)
    if code is not None:
        quantity.update(unit=unit, system=UCUM, code=code)
    elif unit:
        quantity["unit"] = unit
    return quantity


def _datetime(text: Any) -> str | None:
    """A sheet's printed time as a FHIR dateTime (local China time), or None when it does not parse."""
    if not isinstance(text, str) or not text.strip():
        return None
    raw = text.strip().replace("/", "-")
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"):
        try:
            return dt.datetime.strptime(raw, fmt).replace(tzinfo=SHEET_TZ).isoformat()
        except ValueError:
            continue
    try:
        return dt.date.fromisoformat(raw).isoformat()
    except ValueError:
        return None


def _concept(system: str, code: str, display: str | None = None) -> dict:
    coding: dict[str, str] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _interpretation(row: dict) -> str | None:
    flag = row.get("flag")
    if flag in ("H", "L"):
        return flag
    has_reference = row.get("ref_low") is not None or row.get("ref_high") is not None or bool(row.get("ref_text"))
    has_value = row.get("value_num") is not None or bool(row.get("qual_level"))
    return "N" if has_reference and has_value else None


def _value(row: dict) -> dict:
    """valueQuantity for a number, valueCodeableConcept for a qualitative level, valueString otherwise."""
    number = row.get("value_num")
    if isinstance(number, (int, float)) and not isinstance(number, bool):
        quantity = _quantity(float(number), row.get("unit"))
        match = _NUMBER.match(str(row.get("value") or ""))
        if match and match.group(1):
            quantity["comparator"] = _COMPARATORS[match.group(1)]
        return {"valueQuantity": quantity}
    level = row.get("qual_level")
    printed = row.get("value")
    if level:
        concept = _concept(LOCAL_QUALITATIVE, str(level))
        if printed:
            concept["text"] = str(printed)
        return {"valueCodeableConcept": concept}
    if printed:
        return {"valueString": str(printed)}
    return {}


def _reference_range(row: dict) -> list[dict]:
    low, high, text = row.get("ref_low"), row.get("ref_high"), row.get("ref_text")
    if low is None and high is None and not text:
        return []
    reference: dict[str, Any] = {}
    if isinstance(low, (int, float)):
        reference["low"] = _quantity(float(low), row.get("unit"))
    if isinstance(high, (int, float)):
        reference["high"] = _quantity(float(high), row.get("unit"))
    if text:
        reference["text"] = str(text)
    return [reference]


def observation_id(record_id: str, index: int) -> str:
    return str(uuid.uuid5(_NS, f"{record_id}/observation/{index}"))


def observation(row: dict, *, observation_id: str, subject: str, effective: str | None,
                issued: str | None) -> dict:
    """One extracted row as an Observation."""
    codings = []
    if row.get("loinc"):
        codings.append({"system": LOINC, "code": str(row["loinc"])})
    local = row.get("std_code") or row.get("code")
    if local:
        codings.append({"system": LOCAL_ANALYTE, "code": str(local)})
    code: dict[str, Any] = {"coding": codings} if codings else {}
    if row.get("name"):
        code["text"] = str(row["name"])
    if not code:
        code["text"] = "unknown analyte"
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": observation_id,
        "status": "preliminary" if row.get("needs_review") else "final",
        "category": [_concept(OBSERVATION_CATEGORY, "laboratory", "Laboratory")],
        "code": code,
        "subject": {"reference": subject},
    }
    if effective:
        resource["effectiveDateTime"] = effective
    if issued and "T" in issued:
        resource["issued"] = issued
    value = _value(row)
    resource.update(value)
    if not value:  # no value at all: say why, as FHIR asks
        resource["dataAbsentReason"] = _concept("http://terminology.hl7.org/CodeSystem/data-absent-reason", "unknown",
                                                "Unknown")
    interpretation = _interpretation(row)
    if interpretation:
        resource["interpretation"] = [_concept(INTERPRETATION, interpretation,
                                               _INTERPRETATION_DISPLAY[interpretation])]
    ranges = _reference_range(row)
    if ranges:
        resource["referenceRange"] = ranges
    return resource


def bundle(report: dict, *, record_id: str, patient_id: str, patient_name: str | None,
           now: dt.datetime) -> dict:
    """The Bundle for one decrypted LabReport. `patient_name` is given only when the patient asks."""
    patient_url = f"urn:uuid:{patient_id}"
    report_url = f"urn:uuid:{record_id}"
    header = report.get("header") or {}
    effective = _datetime(header.get("collected_at")) or _datetime(header.get("reported_at"))
    issued = _datetime(header.get("reported_at"))
    patient: dict[str, Any] = {"resourceType": "Patient", "id": patient_id}
    if patient_name:
        patient["name"] = [{"text": patient_name}]
    observations = []
    for index, row in enumerate(report.get("results") or []):
        oid = observation_id(record_id, index)
        observations.append((f"urn:uuid:{oid}", observation(row, observation_id=oid, subject=patient_url,
                                                            effective=effective, issued=issued)))
    preliminary = bool(report.get("needs_review")) or any(o["status"] == "preliminary" for _, o in observations)
    diagnostic: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": record_id,
        "status": "preliminary" if preliminary else "final",
        "category": [_concept(DIAGNOSTIC_SERVICE, "LAB", "Laboratory")],
        "code": {**_concept(LOINC, *LAB_REPORT_LOINC), "text": str(header.get("title") or "检验报告")},
        "subject": {"reference": patient_url},
        "result": [{"reference": url} for url, _ in observations],
    }
    if effective:
        diagnostic["effectiveDateTime"] = effective
    if issued and "T" in issued:
        diagnostic["issued"] = issued
    entries = [{"fullUrl": patient_url, "resource": patient}, {"fullUrl": report_url, "resource": diagnostic}]
    entries += [{"fullUrl": url, "resource": resource} for url, resource in observations]
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid5(_NS, f"{record_id}/bundle")),
        "type": "collection",
        "timestamp": now.astimezone(dt.UTC).isoformat(),
        "entry": entries,
    }


def read_bundle(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, record_id: str) -> dict:
    """The record's Bundle, through the gate (`record.read`, audited); 409 while there are no lab values."""
    record, dek = records.get_or_raise(session, vault, identity=identity, ctx=ctx, record_id=record_id,
                                       action="record.read")
    return bundle_of(session, vault, record=record, dek=dek, for_patient=identity.patient_id == record.patient_id)


def bundle_of(session: Session, vault: Vault, *, record: Any, dek: Any, for_patient: bool) -> dict:
    """The Bundle of a record the caller was already allowed to read (the export reuses it)."""
    if record.category not in records.EXTRACTABLE:
        raise Conflict("Only lab reports have lab values", extra={"ocr_status": record.ocr_status})
    if record.ocr_status == records.DECLINED:
        raise labs.declined_error()
    report = records.results_of(vault, record, dek)
    if report is None:
        raise Conflict("This record has no extracted lab results (yet)", extra={"ocr_status": record.ocr_status})
    name = _own_name(session, vault, patient_id=record.patient_id) if for_patient else None
    return bundle(report, record_id=record.id, patient_id=record.patient_id, patient_name=name, now=vault.clock())


def _own_name(session: Session, vault: Vault, *, patient_id: str) -> str | None:
    patient = patients.get(session, patient_id=patient_id)
    if patient is None or patient.erased_at is not None:
        raise NotFound()
    key = vault.keys.open_data_key(patient.id, patient.wrapped_dek)
    return fields.open_text(key, patient.real_name_enc, column="real_name", table="patients", row_id=patient.id,
                            patient_id=patient.id)
