"""The patient's export (issue 16 part 4, PIPL 45): an AES-256 ZIP that opens with the passphrase and not without,
whose record count and file hashes match the vault; served once, within 24 hours; audited; the passphrase is never
stored."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import time

import pytest
import pyzipper
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import select

from audit.models import AuditEvent
from tests.helpers import login, png_bytes, real_jpeg, register, staff, upload
from tests.helpers.scan import scan_tree

sheetgen = pytest.importorskip("tests.ocr.sheetgen")
PASS = "长城 long export passphrase 2026"
PROBLEM = "urn:healthvault:problem:"


def _wait_ocr(client, headers, record_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/records/{record_id}", headers=headers).json()
        if body["ocr_status"] not in ("pending",):
            return body
        time.sleep(0.2)
    raise AssertionError("extraction did not finish")


def _wait_export(client, headers, export_id, timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/exports/{export_id}", headers=headers).json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.1)
    raise AssertionError("export did not finish")


def _events(vault, action):
    with vault.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


@pytest.fixture
def patient(client, vault, clock):
    register(client, username="export-patient", real_name="周晓燕")
    headers = login(client, "export-patient")
    sheet = sheetgen.digital_pdf()
    lab = upload(client, headers, sheet.data, content_type="application/pdf", title="血常规 2026").json()
    _wait_ocr(client, headers, lab["record_id"])
    photo = upload(client, headers, png_bytes(b"export-canary-4f1d"), category="exam_report",
                   filename="周晓燕-CT.png").json()
    scan = upload(client, headers, real_jpeg((64, 48)), category="medical_record", title="出院小结").json()
    doctor = staff(client, vault, "doctor", "export-doctor")
    doctor.pop("_secret")
    grant = client.post("/v1/grants", headers=headers, json={
        "grantee": "export-doctor", "record_ids": [lab["record_id"]], "actions": ["view"], "purpose": "复诊 咨询",
        "expires_at": (clock() + dt.timedelta(days=1)).isoformat()}).json()
    assert client.get(f"/v1/records/{lab['record_id']}", headers=doctor).status_code == 200
    return {"headers": headers, "doctor": doctor, "records": [lab, photo, scan], "grant": grant}


def test_export_opens_with_the_passphrase_and_matches_the_vault(client, vault, patient):
    headers = patient["headers"]
    started = client.post("/v1/exports", headers=headers, json={"passphrase": PASS})
    assert started.status_code == 202, started.text
    export_id = started.json()["export_id"]
    status = _wait_export(client, headers, export_id)
    assert status["status"] == "done", status
    assert status["done"] == status["total"] == len(patient["records"]) + 4
    assert dt.datetime.fromisoformat(status["expires_at"]) - dt.datetime.fromisoformat(status["created_at"]) \
        <= dt.timedelta(hours=24, minutes=1)

    # At rest before the download: sealed (the ZIP's entry names and the record bytes appear nowhere) and the
    # passphrase is stored nowhere (database, WAL, blobs, logs).
    vault.engine.dispose()
    assert scan_tree(vault.settings.data_dir, [PASS, "export-canary-4f1d", "manifest.json", "周晓燕"]) == []

    response = client.get(f"/v1/exports/{export_id}/download", headers=headers)
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    data = response.content
    assert int(response.headers["content-length"]) == len(data) == status["size_bytes"]

    names = pyzipper.AESZipFile(io.BytesIO(data)).namelist()
    for personal in ("周晓燕", "血常规", "CT", "export-patient", *(r["record_id"] for r in patient["records"])):
        assert all(personal not in n for n in names), personal
    assert {"README.txt", "manifest.json", "lab-results.json", "lab-results.csv", "grants.json", "access-log.json",
            "access-log.csv", "summary.pdf"} <= set(names)

    with pyzipper.AESZipFile(io.BytesIO(data)) as zf:  # no passphrase, a wrong one: nothing opens
        for info in zf.infolist():
            # every entry encrypted (flag bit 0), WinZip AES (extra field 0x9901, vendor "AE"), strength 3: AES-256
            at = info.extra.index(b"\x01\x99")
            assert info.flag_bits & 0x1 and info.extra[at + 6:at + 8] == b"AE" and info.extra[at + 8] == 3
        with pytest.raises(RuntimeError):
            zf.read("manifest.json")
        zf.setpassword(b"wrong passphrase entirely")
        with pytest.raises(RuntimeError):
            zf.read("manifest.json")

    with pyzipper.AESZipFile(io.BytesIO(data)) as zf:
        zf.setpassword(PASS.encode())
        manifest = json.loads(zf.read("manifest.json"))
        listed = client.get("/v1/records", headers=headers).json()["items"]
        assert len(manifest["records"]) == len(listed) == 3
        by_id = {r["record_id"]: r for r in listed}
        for entry in manifest["records"]:
            content = zf.read(entry["file"])
            assert hashlib.sha256(content).hexdigest() == entry["sha256"] == by_id[entry["record_id"]]["sha256"]
            assert content == client.get(f"/v1/records/{entry['record_id']}/content", headers=headers).content
        lab_id = patient["records"][0]["record_id"]
        labs = json.loads(zf.read("lab-results.json"))
        assert [item["record_id"] for item in labs] == [lab_id]
        assert any(r["std_code"] == "GLU" and r["value"] == "5.15" for r in labs[0]["report"]["results"])
        rows = list(csv.DictReader(io.StringIO(zf.read("lab-results.csv").decode("utf-8-sig"))))
        assert len(rows) == manifest["lab_result_rows"] == len(labs[0]["report"]["results"])
        assert {"WBC", "GLU"} <= {r["code"] for r in rows}
        fhir_names = [n for n in names if n.startswith("fhir/")]
        assert len(fhir_names) == 1
        bundle = json.loads(zf.read(fhir_names[0]))
        Bundle.model_validate(bundle)
        assert bundle["entry"][0]["resource"]["name"] == [{"text": "周晓燕"}]  # the patient's own copy
        grants = json.loads(zf.read("grants.json"))
        assert [(g["grant_id"], g["grantee"], g["purpose"]) for g in grants] == [
            (patient["grant"]["grant_id"], "export-doctor", "复诊 咨询")]
        from consent import receipts  # the patient's copy proves the purpose: receipt, purpose and salt

        assert receipts.purpose_matches(receipts.verify(json.dumps(grants[0]["receipt"])), "复诊 咨询",
                                        bytes.fromhex(grants[0]["purpose_salt"]))
        access = json.loads(zf.read("access-log.json"))
        assert any(e["actor"] == "export-doctor" and e["action"] == "record.read" for e in access)
        assert len(list(csv.reader(io.StringIO(zf.read("access-log.csv").decode("utf-8-sig"))))) == len(access) + 1
        summary = zf.read("summary.pdf")
        import pypdfium2

        text = pypdfium2.PdfDocument(summary)[0].get_textpage().get_text_range()
        assert "个人健康数据导出摘要" in text and "记录总数：3" in text and "周晓燕" in text
        assert "AES-256" in zf.read("README.txt").decode()

    again = client.get(f"/v1/exports/{export_id}/download", headers=headers)  # once, then gone
    assert again.status_code == 410 and again.json()["type"] == PROBLEM + "gone"
    assert client.get(f"/v1/exports/{export_id}", headers=headers).json()["status"] == "downloaded"
    assert not vault.blobs.exists(export_id)
    actions = [(e.action, e.outcome) for e in _events(vault, "export.create") + _events(vault, "export.build")
               + _events(vault, "export.download")]
    assert ("export.create", "allow") in actions and ("export.build", "allow") in actions
    assert actions.count(("export.download", "allow")) == 2  # both attempts are on record (the second got 410)
    with vault.session() as session:
        details = " ".join(str(e.reason) + str(e.resource_id) for e in session.scalars(select(AuditEvent)))
    assert PASS not in details


def test_only_the_patient_reaches_their_export(client, vault, patient):
    export_id = client.post("/v1/exports", headers=patient["headers"], json={"passphrase": PASS}).json()["export_id"]
    _wait_export(client, patient["headers"], export_id)
    register(client, username="export-other")
    other = login(client, "export-other")
    for url in (f"/v1/exports/{export_id}", f"/v1/exports/{export_id}/download"):
        assert client.get(url, headers=other).status_code == 404
        assert client.get(url, headers=patient["doctor"]).status_code == 404
        assert client.get(url).status_code == 401
    assert client.post("/v1/exports", headers=patient["doctor"], json={"passphrase": PASS}).status_code == 403
    denied = [e for e in _events(vault, "export.read") + _events(vault, "export.download") if e.outcome == "deny"]
    assert len(denied) == 4
    assert client.get(f"/v1/exports/{export_id}/download", headers=patient["headers"]).status_code == 200  # untouched


def test_the_package_expires_after_24_hours(client, vault, clock, patient):
    export_id = client.post("/v1/exports", headers=patient["headers"], json={"passphrase": PASS}).json()["export_id"]
    assert _wait_export(client, patient["headers"], export_id)["status"] == "done"
    assert vault.blobs.exists(export_id)
    clock.advance(hours=24, minutes=1)
    headers = login(client, "export-patient")  # the earlier session timed out meanwhile
    assert client.get(f"/v1/exports/{export_id}", headers=headers).json()["status"] == "expired"
    assert not vault.blobs.exists(export_id)
    assert client.get(f"/v1/exports/{export_id}/download", headers=headers).status_code == 410

    # a package nobody asks about again is swept when any export starts
    second = client.post("/v1/exports", headers=headers, json={"passphrase": PASS}).json()["export_id"]
    assert _wait_export(client, headers, second)["status"] == "done"
    clock.advance(hours=25)
    register(client, username="export-sweeper")
    assert client.post("/v1/exports", headers=login(client, "export-sweeper"),
                       json={"passphrase": PASS}).status_code == 202
    assert not vault.blobs.exists(second)


def test_weak_passphrases_and_concurrent_builds(client, patient):
    headers = patient["headers"]
    for weak in ("short", "aaaaaaaaaaaaaaaa", "1212121212121212"):
        response = client.post("/v1/exports", headers=headers, json={"passphrase": weak})
        assert response.status_code == 422, weak
    assert client.post("/v1/exports", headers=headers, json={}).status_code == 422
    assert client.post("/v1/exports", headers=headers, json={"passphrase": PASS, "x": 1}).status_code == 422
    assert client.get("/v1/exports/not-a-uuid", headers=headers).status_code == 422
    assert client.get("/v1/exports/5d2c1b0a-2222-4e5f-8a9b-0c1d2e3f4a5b", headers=headers).status_code == 404


def test_a_failed_build_leaves_nothing_and_says_so(client, vault, patient):
    headers = patient["headers"]
    vault.blobs.delete(patient["records"][1]["record_id"])  # a blob lost under the vault's feet
    export_id = client.post("/v1/exports", headers=headers, json={"passphrase": PASS}).json()["export_id"]
    status = _wait_export(client, headers, export_id)
    assert status["status"] == "failed" and status["error"] == "FileNotFoundError"
    assert not vault.blobs.exists(export_id)
    assert list(vault.settings.blob_dir.joinpath("tmp").glob("*.part")) == []
    assert client.get(f"/v1/exports/{export_id}/download", headers=headers).status_code == 409


def test_one_build_at_a_time(client, vault, clock, patient):
    from vault.db.models import PatientExport

    with vault.session() as session:  # a build in progress (in this or another process)
        from vault.db.models import Account

        patient_id = session.scalar(select(Account.patient_id).where(Account.username == "export-patient"))
        account_id = session.scalar(select(Account.id).where(Account.username == "export-patient"))
        session.add(PatientExport(id="00000000-0000-4000-8000-000000000001", patient_id=patient_id,
                                  account_id=account_id, status="running", done=0, total=5, created_at=clock(),
                                  updated_at=clock(), expires_at=clock() + dt.timedelta(hours=24),
                                  wrapped_dek=b"x"))
        session.commit()
    busy = client.post("/v1/exports", headers=patient["headers"], json={"passphrase": PASS})
    assert busy.status_code == 409
    clock.advance(minutes=11)  # its process went away: reported failed, a new build may start
    headers = login(client, "export-patient")
    stale = client.get("/v1/exports/00000000-0000-4000-8000-000000000001", headers=headers).json()
    assert stale["status"] == "failed" and stale["error"] == "interrupted"
    assert client.post("/v1/exports", headers=headers, json={"passphrase": PASS}).status_code == 202


def test_the_package_opens_with_7zip(client, patient, tmp_path):
    """An independent, common tool (7-Zip: what Windows users and many phone apps use) opens it with the passphrase
    and refuses without it."""
    import os
    import shutil
    import subprocess

    if shutil.which("7z") is None:
        if os.environ.get("CI"):
            pytest.fail("7z (Debian p7zip-full) is missing: .ci/run installs it")
        pytest.skip("7z not installed")
    headers = patient["headers"]
    export_id = client.post("/v1/exports", headers=headers, json={"passphrase": PASS}).json()["export_id"]
    _wait_export(client, headers, export_id)
    package = tmp_path / "export.zip"
    package.write_bytes(client.get(f"/v1/exports/{export_id}/download", headers=headers).content)
    wrong = subprocess.run(["7z", "t", "-pnot-the-passphrase", str(package)], capture_output=True, text=True)
    assert wrong.returncode != 0
    out = tmp_path / "out"
    opened = subprocess.run(["7z", "x", f"-p{PASS}", f"-o{out}", str(package)], capture_output=True, text=True)
    assert opened.returncode == 0, opened.stdout + opened.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["records"]) == 3
    for entry in manifest["records"]:
        assert hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
