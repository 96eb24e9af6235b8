"""FHIR R4 (issue 16 part 4): every bundle of the OCR test sheets validates against the R4B models, codes come from
the right systems, every UCUM unit parses; the route is gated, audited and gives the name to the patient only."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

import ocr
from ocr import analytes
from tests.helpers import login, png_bytes, register, staff, upload
from vault.labs import fhir

sheetgen = pytest.importorskip("tests.ocr.sheetgen")
NOW = dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.UTC)
LOINC_BY_CODE = {a.code: a.loinc for a in analytes.TABLE if a.loinc}


@pytest.fixture(scope="module")
def ucum():
    from ucumvert import PintUcumRegistry

    return PintUcumRegistry()


def _sheets():
    """Born-digital sheets (text layer, fast) in every layout the generator has, plus one photographed sheet."""
    yield "default", sheetgen.digital_pdf()
    yield "qualitative", sheetgen.digital_pdf(sheetgen.QUAL_ROWS)
    yield "two-tables", sheetgen.digital_pdf(two_tables=True)
    yield "with-code-column", sheetgen.digital_pdf(columns=("seq", "name", "code", "result", "flag", "ref", "unit"))
    yield "glued-flags", sheetgen.digital_pdf(glued_flags=True)
    yield "image", sheetgen.image_sheet()


def check_bundle(document: dict, ucum, *, patient_name: str | None = None) -> None:
    """Structure through the R4B models, terminology by hand (the models check neither codes nor units)."""
    Bundle.model_validate(document)
    assert document["type"] == "collection"
    resources = [e["resource"] for e in document["entry"]]
    kinds = [r["resourceType"] for r in resources]
    assert kinds[:2] == ["Patient", "DiagnosticReport"] and set(kinds[2:]) <= {"Observation"}
    patient = Patient.model_validate(resources[0])
    assert patient.identifier is None and patient.telecom is None  # no ID number, no phone
    assert (patient.name[0].text if patient.name else None) == patient_name
    report = DiagnosticReport.model_validate(resources[1])
    urls = {e["fullUrl"] for e in document["entry"]}
    assert {r.reference for r in report.result} <= urls and len(report.result) == len(resources) - 2
    assert report.status in ("final", "preliminary")
    for resource in resources[2:]:
        Observation.model_validate(resource)
        assert resource["status"] in ("final", "preliminary")
        assert resource["subject"]["reference"] == document["entry"][0]["fullUrl"]
        systems = [c["system"] for c in resource["code"].get("coding", [])]
        assert set(systems) <= {fhir.LOINC, fhir.LOCAL_ANALYTE}
        loinc = [c["code"] for c in resource["code"].get("coding", []) if c["system"] == fhir.LOINC]
        local = [c["code"] for c in resource["code"].get("coding", []) if c["system"] == fhir.LOCAL_ANALYTE]
        if loinc:  # the LOINC code is the analyte table's, for the local code it names
            assert loinc[0] in LOINC_BY_CODE.values() and LOINC_BY_CODE.get(local[0]) == loinc[0]
        values = [k for k in resource if k.startswith("value")]
        assert len(values) <= 1
        quantities = [resource.get("valueQuantity")] + [r.get(side) for r in resource.get("referenceRange", [])
                                                        for side in ("low", "high")]
        for quantity in filter(None, quantities):
            if "system" in quantity:
                assert quantity["system"] == fhir.UCUM
                ucum.from_ucum(quantity["code"])  # raises on anything that is not UCUM
            elif loinc and quantity.get("unit"):
                pytest.fail(f"LOINC-coded observation with a non-UCUM unit {quantity['unit']!r}")
        for concept in resource.get("interpretation", []):
            assert [(c["system"], c["code"]) for c in concept["coding"]] in (
                [(fhir.INTERPRETATION, "H")], [(fhir.INTERPRETATION, "L")], [(fhir.INTERPRETATION, "N")])


def test_every_bundle_of_the_ocr_test_sheets_validates(ucum):
    checked = 0
    for name, sheet in _sheets():
        report = ocr.extract(sheet.data).to_dict()
        assert report["results"], name
        document = fhir.bundle(report, record_id="0b6f5a9e-1111-4a3b-9c1d-2e3f4a5b6c7d",
                               patient_id="5d2c1b0a-2222-4e5f-8a9b-0c1d2e3f4a5b", patient_name=None, now=NOW)
        check_bundle(document, ucum)
        observations = [e["resource"] for e in document["entry"][2:]]
        assert len(observations) == len(report["results"])
        checked += len(observations)
    assert checked >= 30


def test_values_codes_ranges_and_interpretations_of_a_known_sheet(ucum):
    report = ocr.extract(sheetgen.digital_pdf().data).to_dict()
    document = fhir.bundle(report, record_id="0b6f5a9e-1111-4a3b-9c1d-2e3f4a5b6c7d",
                           patient_id="5d2c1b0a-2222-4e5f-8a9b-0c1d2e3f4a5b", patient_name="李四", now=NOW)
    check_bundle(document, ucum, patient_name="李四")
    by_code = {next(c["code"] for c in e["resource"]["code"]["coding"] if c["system"] == fhir.LOCAL_ANALYTE):
               e["resource"] for e in document["entry"][2:]}
    wbc = by_code["WBC"]
    assert {"system": fhir.LOINC, "code": "6690-2"} in wbc["code"]["coding"]
    assert wbc["valueQuantity"] == {"value": 11.32, "unit": "10^9/L", "system": fhir.UCUM, "code": "10*9/L"}
    assert wbc["interpretation"][0]["coding"][0]["code"] == "H"
    assert wbc["referenceRange"][0]["low"]["value"] == 3.5 and wbc["referenceRange"][0]["high"]["code"] == "10*9/L"
    assert by_code["CREA"]["valueQuantity"]["code"] == "umol/L"
    assert by_code["HGB"]["interpretation"][0]["coding"][0]["code"] == "L"
    assert by_code["GLU"]["interpretation"][0]["coding"][0]["code"] == "N"
    assert by_code["TC"]["referenceRange"][0] == {"high": {"value": 5.2, "unit": "mmol/L", "system": fhir.UCUM,
                                                           "code": "mmol/L"}, "text": "<5.20"}
    assert document["entry"][1]["resource"]["effectiveDateTime"] == "2024-01-01T08:30:00+08:00"
    # nothing of the printed header travels: not the outpatient number, the doctor or the sample id
    text = str(document)
    for printed in ("12345678", "王五", "202401010001", "测试市人民医院"):
        assert printed not in text


def test_qualitative_review_and_unknown_units():
    rows = [
        {"name": "尿蛋白", "code": "PRO", "std_code": "PRO", "loinc": "5804-0", "value": "阳性(++)", "value_num": None,
         "qual_level": "2+", "unit": None, "ref_text": "阴性", "flag": "H", "needs_review": False},
        {"name": "某项", "code": "XYZ", "std_code": None, "loinc": None, "value": "3.1", "value_num": 3.1,
         "qual_level": None, "unit": "xyz/L", "ref_low": None, "ref_high": None, "flag": None, "needs_review": True},
        {"name": "备注", "code": None, "std_code": None, "loinc": None, "value": "见附页", "value_num": None,
         "qual_level": None, "unit": None, "flag": None, "needs_review": False},
        {"name": "钾", "code": "K", "std_code": "K", "loinc": "2823-3", "value": "<0.5", "value_num": 0.5,
         "qual_level": None, "unit": "mmol/L", "flag": None, "needs_review": False},
    ]
    document = fhir.bundle({"header": {}, "results": rows}, record_id="r", patient_id="p", patient_name=None, now=NOW)
    Bundle.model_validate(document)
    pro, unknown, remark, potassium = (e["resource"] for e in document["entry"][2:])
    assert pro["valueCodeableConcept"] == {"coding": [{"system": fhir.LOCAL_QUALITATIVE, "code": "2+"}],
                                           "text": "阳性(++)"}
    assert pro["referenceRange"] == [{"text": "阴性"}] and pro["status"] == "final"
    assert unknown["status"] == "preliminary" and unknown["valueQuantity"] == {"value": 3.1, "unit": "xyz/L"}
    assert "interpretation" not in unknown
    assert remark["valueString"] == "见附页"
    assert potassium["valueQuantity"]["comparator"] == "<"
    assert document["entry"][1]["resource"]["status"] == "preliminary"  # one row still needs review
    assert fhir.ucum_unit("xyz/L") is None and fhir.ucum_unit("µmol/L") == "umol/L"


def test_every_mapped_unit_is_ucum(ucum):
    from ocr.parse import CANON_UNITS

    for unit in CANON_UNITS:
        code = fhir.ucum_unit(unit)
        assert code is not None, unit
        ucum.from_ucum(code)
    with pytest.raises(Exception):  # noqa: B017 - the checker itself must be able to fail
        ucum.from_ucum("xyz/L")


def _wait(client, headers, record_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/records/{record_id}", headers=headers).json()
        if body["ocr_status"] not in ("pending", None):
            return body
        time.sleep(0.2)
    raise AssertionError("extraction did not finish")


def _events(vault, action):
    from sqlalchemy import text

    with vault.session() as session:
        return session.execute(text("SELECT outcome, grant_id FROM audit_events WHERE action = :a ORDER BY seq"),
                               {"a": action}).all()


def test_route_gated_audited_and_the_name_only_for_the_patient(client, vault, clock, ucum):
    register(client, username="fhir-patient", real_name="王小明")
    patient = login(client, "fhir-patient")
    doctor = staff(client, vault, "doctor", "fhir-doctor")
    doctor.pop("_secret")
    stranger = staff(client, vault, "doctor", "fhir-stranger")
    stranger.pop("_secret")
    sheet = sheetgen.digital_pdf()
    record_id = upload(client, patient, sheet.data, content_type="application/pdf").json()["record_id"]
    _wait(client, patient, record_id)

    own = client.get(f"/v1/records/{record_id}/fhir", headers=patient)
    assert own.status_code == 200 and own.headers["content-type"].startswith("application/fhir+json")
    check_bundle(own.json(), ucum, patient_name="王小明")
    assert "no-store" in own.headers["cache-control"]

    assert client.get(f"/v1/records/{record_id}/fhir", headers=doctor).status_code == 404  # no grant yet
    grant = client.post("/v1/grants", headers=patient, json={
        "grantee": "fhir-doctor", "record_ids": [record_id], "actions": ["view"], "purpose": "consult-7",
        "expires_at": (clock() + dt.timedelta(days=1)).isoformat()}).json()
    shared = client.get(f"/v1/records/{record_id}/fhir", headers=doctor)
    assert shared.status_code == 200
    check_bundle(shared.json(), ucum, patient_name=None)  # the grantee never gets the name
    assert "王小明" not in shared.text
    assert client.get(f"/v1/records/{record_id}/fhir", headers=stranger).status_code == 404
    events = _events(vault, "record.read")
    assert ("allow", grant["grant_id"]) in events and ("deny", None) in events

    client.delete(f"/v1/grants/{grant['grant_id']}", headers=patient)
    assert client.get(f"/v1/records/{record_id}/fhir", headers=doctor).status_code == 404  # revoked: next request

    photo = upload(client, patient, png_bytes(b"x"), category="other").json()["record_id"]
    problem = client.get(f"/v1/records/{photo}/fhir", headers=patient)
    assert problem.status_code == 409 and problem.json()["type"] == "urn:healthvault:problem:conflict"
    assert client.get("/v1/records/not-a-uuid/fhir", headers=patient).status_code == 422
    assert client.get(f"/v1/records/{record_id}/fhir").status_code == 401
