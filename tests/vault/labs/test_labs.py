"""Lab sheets become data inside the vault: upload → job → encrypted results → API → corrections → trends."""

from __future__ import annotations

import time

import pytest

from tests.helpers import login, register, upload
from tests.helpers.scan import scan_tree

sheetgen = pytest.importorskip("tests.ocr.sheetgen")


def _wait(client, headers, record_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/records/{record_id}", headers=headers).json()
        if body["ocr_status"] not in ("pending", None):
            return body
        time.sleep(0.2)
    raise AssertionError("extraction did not finish")


def test_upload_extract_encrypted_results_corrections_and_trends(client, vault, clock):
    register(client, username="lab-patient")
    headers = login(client, "lab-patient")
    sheet = sheetgen.digital_pdf()
    created = upload(client, headers, sheet.data, category="lab_report", content_type="application/pdf")
    assert created.status_code == 201 and created.json()["ocr_status"] == "pending"
    body = _wait(client, headers, created.json()["record_id"])
    assert body["ocr_status"] in ("done", "needs_review"), body.get("ocr_error")
    results = {r["std_code"] or r["code"]: r for r in body["lab_results"]["results"]}
    assert results["GLU"]["value"] == "5.15" and results["GLU"]["unit"] == "mmol/L"
    assert results["CREA"]["flag"] == "H"
    # Results are sealed at rest: the header name and values appear nowhere in the data directory.
    vault.engine.dispose()
    assert scan_tree(vault.settings.data_dir, [sheet.header["name"], "高密度脂蛋白胆固醇"]) == []

    record_id = body["record_id"]
    row = next(i for i, r in enumerate(body["lab_results"]["results"]) if (r["std_code"] or r["code"]) == "GLU")
    fixed = client.patch(f"/v1/records/{record_id}/lab-results", headers=headers,
                         json={"row": row, "field": "value", "value": "5.16"})
    assert fixed.status_code == 200
    history = client.get(f"/v1/records/{record_id}/lab-results/history", headers=headers).json()
    assert history[0]["old"] == "5.15" and history[0]["new"] == "5.16"
    assert client.patch(f"/v1/records/{record_id}/lab-results", headers=headers,
                        json={"row": row, "field": "password", "value": "x"}).status_code == 422

    clock.advance(minutes=5)
    second = upload(client, headers, sheetgen.digital_pdf().data, category="lab_report",
                    content_type="application/pdf").json()
    _wait(client, headers, second["record_id"])
    trend = client.get("/v1/patients/me/lab-trends", headers=headers, params={"code": "glu"}).json()
    assert [p["value"] for p in trend] == ["5.16", "5.15"]


def _png_with_idat(idat: bytes) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_bad_pages_fail_cleanly_and_the_worker_keeps_going(client, vault):
    register(client, username="lab-bad")
    headers = login(client, "lab-bad")
    # Encrypted and truncated files no longer reach OCR: the upload hygiene pass refuses them (issue 16).
    bad = upload(client, headers, sheetgen.encrypted_pdf(), category="lab_report", content_type="application/pdf")
    assert bad.status_code == 422 and bad.json()["type"] == "urn:healthvault:problem:encrypted-file"
    huge = upload(client, headers, sheetgen.png_header_only(10_000, 10_000), category="lab_report")  # 100 MP
    assert huge.status_code == 422 and huge.json()["type"] == "urn:healthvault:problem:file-too-complex"
    # Well-formed chunks the hygiene pass keeps, pixel data no decoder can read: the OCR job fails, cleanly.
    broken = _png_with_idat(b"\x78\x9c" + bytes(range(256)) * 8)
    garbled = upload(client, headers, broken, category="lab_report").json()
    body = _wait(client, headers, garbled["record_id"])
    assert body["ocr_status"] == "failed" and body["ocr_error"]
    good = upload(client, headers, sheetgen.digital_pdf().data, category="lab_report",
                  content_type="application/pdf").json()
    assert _wait(client, headers, good["record_id"])["ocr_status"] in ("done", "needs_review")
    other = upload(client, headers, sheetgen.digital_pdf().data, category="exam_report",
                   content_type="application/pdf").json()
    assert other["ocr_status"] is None  # only lab reports are extracted
