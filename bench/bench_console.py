"""The console's record page against the JSON read of the same record (target, issue 15: page <= 2x JSON).

    python bench/bench_console.py [--requests 300] [--rows 40] [--rounds 3] [--quick]

One vault on a fresh temporary data directory (SQLite, cheap password hashing: the sign-in is not what is timed),
its FastAPI app driven in process by one HTTP client (the same client for both, so its own overhead is the same on
both sides). A patient with two lab reports whose extracted results hold `--rows` values each (a synthetic
LabReport sealed under each record's DEK, as the OCR job would store it: OCR itself is not what is measured). Then,
interleaved request by request so both see the same machine state:

* **JSON**: `GET /v1/records/{id}` with the bearer token (metadata and the 40 values, as JSON);
* **page**: `GET /records/{id}` with the same token in the console cookie: the full HTML page with the 40-row lab
  table and the trend chart of one analyte across both reports (SVG with the reference band), i.e. the record read
  plus the trend service (`labs.trends`, which reads every report of the patient), each through the gate and audited.

Prints the median and p90 of each per round, and the ratio page / JSON of the medians (target <= 2.0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PASSWORD = "Str0ng-Passw0rd!"
PASSPHRASE = b"bench console passphrase"
TARGET = 2.0


def _report(rows: int, shift: float) -> str:
    results = []
    for i in range(rows):
        value = round(4.0 + (i % 7) + shift, 2)
        results.append({"seq": i + 1, "name": f"项目{i + 1}", "code": f"T{i:02d}", "std_code": f"T{i:02d}",
                        "loinc": None, "value": f"{value}", "value_num": value, "qual_level": None,
                        "unit": "mmol/L", "unit_printed": "mmol/L", "ref_low": 3.5, "ref_high": 9.5,
                        "ref_text": "3.5-9.5", "flag": "H" if value > 9.5 else None, "flag_printed": None,
                        "flag_derived": None, "page": 1, "bbox": None, "confidence": {}, "conf": 0.99,
                        "needs_review": i % 13 == 5, "review_reasons": []})
    return json.dumps({"header": {}, "results": results, "pages": 1, "source": {}, "needs_review": False,
                       "warnings": [], "provenance": {}, "header_confidence": {},
                       "schema": "healthvault-labreport/v1"}, ensure_ascii=False)


def _seal_results(vault, record_id: str, payload: str) -> None:
    """Store extracted results the way the OCR job does (vault/labs/service.run_extraction)."""
    from sqlalchemy import update

    from vault import fields
    from vault.db.models import Record

    with vault.session() as session:
        record = session.get(Record, record_id)
        dek = vault.keys.open_data_key(record.patient_id, record.wrapped_dek)
        sealed = fields.seal(dek, payload, column="lab_results", table="records", row_id=record.id,
                             patient_id=record.patient_id)
        session.execute(update(Record).where(Record.id == record_id)
                        .values(lab_results_enc=sealed, ocr_status="done", ocr_error=None))
        session.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="50 requests, 1 round (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 50, 1

    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.helpers import make_id_number, make_phone, png_bytes
    from vault.runtime import init_data_dir, open_vault
    from vault.settings import Settings

    with tempfile.TemporaryDirectory(prefix="hv-bench-console-") as tmp:
        settings = Settings.load(Path(tmp) / "var", password_time_cost=1, password_memory_kib=1024,
                                 password_parallelism=1)
        init_data_dir(settings, PASSPHRASE, kdf_params={"t": 1, "m": 1024, "p": 1})
        vault = open_vault(settings, PASSPHRASE)
        try:
            with TestClient(create_app(vault)) as client:
                notice = client.get("/v1/privacy-notice").json()["version"]
                registered = client.post("/v1/patients/register", json={
                    "username": "bench.console", "password": PASSWORD, "real_name": "王芳",
                    "id_number": make_id_number(), "phone": make_phone(),
                    "consents": {"notice_version": notice, "health_data": True, "id_number": True, "ocr": True}})
                assert registered.status_code == 201, registered.text
                token = client.post("/v1/auth/login", json={"username": "bench.console", "password": PASSWORD}
                                    ).json()["access_token"]
                bearer = {"Authorization": f"Bearer {token}"}
                ids = []
                for n in range(2):
                    made = client.post("/v1/records", headers=bearer, data={"category": "lab_report",
                                                                            "title": f"血常规 {n}"},
                                       files={"file": (f"sheet{n}.png", png_bytes(b"b%d" % n), "image/png")})
                    assert made.status_code == 201, made.text
                    ids.append(made.json()["record_id"])
                for _ in range(200):  # the OCR job of a 1x1 image fails quickly; then the results are ours
                    statuses = [client.get(f"/v1/records/{i}", headers=bearer).json()["ocr_status"] for i in ids]
                    if "pending" not in statuses:
                        break
                    time.sleep(0.05)
                for n, record_id in enumerate(ids):
                    _seal_results(vault, record_id, _report(args.rows, shift=n * 0.7))
                record_id = ids[-1]
                json_url, page_url = f"/v1/records/{record_id}", f"/records/{record_id}"
                client.cookies.set("hv_session", token)
                page = client.get(page_url, headers={})
                assert page.status_code == 200, page.text[:500]
                assert page.text.count("<tr") >= args.rows and "<svg class=\"trend\"" in page.text
                assert page.text.count("<circle") == 2, "the trend spans both reports"
                body = client.get(json_url, headers=bearer)
                assert len(body.json()["lab_results"]["results"]) == args.rows
                print(f"record page: {len(page.content)} bytes of HTML, {args.rows} values, trend of 2 reports; "
                      f"JSON: {len(body.content)} bytes")
                ratios = []
                for round_no in range(1, args.rounds + 1):
                    json_times, page_times = [], []
                    for _ in range(args.requests):
                        started = time.perf_counter()
                        response = client.get(json_url, headers=bearer)
                        json_times.append(time.perf_counter() - started)
                        assert response.status_code == 200
                        started = time.perf_counter()
                        response = client.get(page_url)
                        page_times.append(time.perf_counter() - started)
                        assert response.status_code == 200
                    json_med, page_med = statistics.median(json_times), statistics.median(page_times)
                    q_json = statistics.quantiles(json_times, n=10)[-1]
                    q_page = statistics.quantiles(page_times, n=10)[-1]
                    ratios.append(page_med / json_med)
                    print(f"round {round_no}: JSON GET median {json_med * 1000:.2f} ms (p90 {q_json * 1000:.2f}); "
                          f"record page median {page_med * 1000:.2f} ms (p90 {q_page * 1000:.2f}); "
                          f"ratio {page_med / json_med:.2f}")
                ratio = statistics.median(ratios)
                print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
                print(f"ratio page/JSON (median of rounds): {ratio:.2f} (target <= {TARGET}) "
                      f"{'PASS' if ratio <= TARGET else 'FAIL'}")
        finally:
            vault.close()


if __name__ == "__main__":
    main()
