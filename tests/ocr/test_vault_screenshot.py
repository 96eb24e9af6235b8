"""A phone screenshot through the whole vault path: upload -> extraction job -> results -> trends.

Written against the API as it stands on this branch (the same calls as tests/test_labs.py); the OCR-only checks of
screenshots are in test_screenshot.py."""
from __future__ import annotations

import time

import pytest

from tests.helpers import login, register, upload

from .sheetgen import ROWS, screenshot


def _wait(client, headers: dict, record_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/records/{record_id}", headers=headers).json()
        if body["ocr_status"] not in ("pending", None):
            return body
        time.sleep(0.2)
    raise AssertionError("extraction did not finish")


@pytest.mark.slow
def test_screenshot_upload_job_results_trends(client, vault, clock):
    register(client, username="shot-patient")
    headers = login(client, "shot-patient")
    first = screenshot(ROWS[:6])
    created = upload(client, headers, first.data, category="lab_report", filename="IMG_0001.PNG",
                     content_type="image/png")
    assert created.status_code == 201, created.text
    body = _wait(client, headers, created.json()["record_id"])
    assert body["ocr_status"] in ("done", "needs_review"), body.get("ocr_error")
    results = {r["std_code"] or r["code"]: r for r in body["lab_results"]["results"]}
    assert results["WBC"]["value"] == "11.32" and results["WBC"]["flag"] == "H"
    assert results["HGB"]["value"] == "98" and results["HGB"]["flag"] == "L"
    assert len(results) == 6

    clock.advance(minutes=5)
    later_rows = [("WBC", "白细胞计数", "8.20", "10^9/L", "3.5-9.5", 3.5, 9.5, None), *ROWS[1:6]]
    second = upload(client, headers, screenshot(later_rows).data, category="lab_report", filename="IMG_0002.PNG",
                    content_type="image/png").json()
    _wait(client, headers, second["record_id"])
    trend = client.get("/v1/patients/me/lab-trends", headers=headers, params={"code": "wbc"}).json()
    assert [p["value"] for p in trend] == ["11.32", "8.20"]
