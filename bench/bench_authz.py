"""Authorization decision latency with 1,000 and 1,000,000 active grants in PostgreSQL, same run.

    python bench/bench_authz.py [--grants 1000000] [--samples 3000] [--threads 4] [--rounds 9] [--quick]

A decision is what the gate does per request (`consent.engine.decide`): one indexed query for the caller's live
grants and break-glass claims on this patient, the per-thread Casbin enforcer loaded with the policies that can
match, enforce. Requests mix allow (a real grant) and deny (a real doctor, a patient who granted them nothing); every
decision is checked. Both table sizes are filled first, then measured in interleaved rounds, from 1 thread and from
`--threads` threads (own session each, one process: the GIL and the 2 cores are shared, as in a worker's
threadpool). Figures are medians over rounds. Targets (issue 4): from 1 thread, p99 <= 1 ms at 1M grants and
<= 2x the p99 at 1k; from N threads, <= 2x the p99 at 1k; never a wrong decision. The N-thread absolute p99 is
printed next to a floor measured in the same rounds (a bare prepared psycopg query from as many threads): on 2
shared vCPUs closed-loop threads queue for the CPU and the GIL, and that floor alone reaches 0.6-1 ms.
Grant create/revoke throughput: bench_grants.py. Fresh schemas, dropped after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import random
import secrets
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PG_URL = os.environ.get("HEALTHVAULT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
UTC = dt.UTC


KEY = bytes(range(32))  # the bench's integrity key (consent.integrity tags, HMAC-SHA-256)


def _key_for(suite: int) -> bytes | None:
    return KEY if suite == 1 else None


def _fill(engine, n: int, doctors: list[str], patients: list[str], now: dt.datetime) -> list[tuple[str, str, str]]:
    """COPY n grants (~20 per doctor), each with its integrity tag; returns some granted (doctor, patient, record)."""
    from types import SimpleNamespace

    from consent import integrity

    granted = []
    buf = io.StringIO()
    nbf, exp = now - dt.timedelta(hours=1), now + dt.timedelta(days=10)
    for i in range(n):
        doctor, patient = doctors[i % len(doctors)], patients[(i * 7919) % len(patients)]
        record = str(uuid.uuid4())
        grant = SimpleNamespace(id=str(uuid.uuid4()), patient_id=patient, grantee_id=doctor,
                                record_ids=json.dumps([record]), categories="[]", include_future=False,
                                actions='["view"]', not_before=nbf, expires_at=exp)
        tag = integrity.seal(KEY, integrity.grant_message(grant, revoked_at=None), suite=1)
        row = [grant.id, patient, doctor, grant.record_ids, "[]", "f", '["view"]', "\\\\x00", "",
               nbf.isoformat(), exp.isoformat(), now.isoformat(), "\\N", "{}", "\\\\x" + tag.hex()]
        buf.write("\t".join(row) + "\n")
        if i % max(1, n // 500) == 0:
            granted.append((doctor, patient, record))
    buf.seek(0)
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur, cur.copy(
                "COPY grants (id, patient_id, grantee_id, record_ids, categories, include_future, actions, purpose_enc,"
                " consult_ref, not_before, expires_at, created_at, revoked_at, receipt, integrity_mac) FROM STDIN"
        ) as copy:
            copy.write(buf.getvalue())
        raw.commit()
    finally:
        raw.close()
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE grants")
    return granted


def _measure(engine, granted, doctors, samples: int, threads: int, *, check: bool = True) -> dict:
    """Latency of `consent.engine.decide` (wall clock, as the calling thread sees it) from `threads` threads, each
    with its own session and connection; half the requests are granted, half are a real doctor asking for a patient
    who granted them nothing. Every decision is checked against that expectation. `check=False` (the A/B of
    `--integrity-ab`) replaces the grant's integrity-tag check with one that accepts every row."""
    from sqlalchemy.orm import Session

    from consent import engine as consent

    real_intact = consent.intact
    if not check:
        consent.intact = lambda source, key_for: True  # type: ignore[assignment]

    now = dt.datetime.now(UTC)
    lat: list[float] = []
    wrong = []
    rng = random.Random(samples * 31 + threads)
    plan = []
    for k in range(samples):
        if k % 2 == 0:
            doctor, patient, record = rng.choice(granted)
            plan.append((doctor, patient, record, True))
        else:
            plan.append((rng.choice(doctors), str(uuid.uuid4()), str(uuid.uuid4()), False))
    ready = threading.Barrier(threads)

    def run(part: list) -> None:
        mine = []
        with Session(engine) as session:
            ready.wait()
            for k, (doctor, patient, record, expect) in enumerate(part):
                req = consent.Request(account_id=doctor, role="doctor", own_patient_id=None, patient_id=patient,
                                      obj=f"record:{record}", cls="category:lab_report/normal", action="record.read")
                t0 = time.perf_counter()
                decision = consent.decide(session, req, now=now, key_for=_key_for)
                mine.append(time.perf_counter() - t0)
                if decision.allowed != expect:
                    wrong.append((doctor, patient))
                if k % 100 == 99:
                    session.rollback()  # a request's transaction ends; the next one begins
        lat.extend(mine)

    started = time.perf_counter()
    workers = [threading.Thread(target=run, args=(plan[n::threads],)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    consent.intact = real_intact  # type: ignore[assignment]
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6
    return {"p50_us": q(0.50), "p99_us": q(0.99), "max_us": lat[-1] * 1e6, "n": len(lat), "wrong": len(wrong),
            "per_s": len(lat) / elapsed}


def _floor(engine, granted, samples: int, threads: int) -> dict:
    """The same lookups as a bare indexed psycopg query (prepared, no SQLAlchemy, no Casbin, no policy building), from
    the same number of threads: what this machine gives any per-request database read at this concurrency."""
    sql = "SELECT id, record_ids FROM grants WHERE grantee_id = %s AND patient_id = %s AND expires_at > %s"
    now = dt.datetime.now(UTC)
    rng = random.Random(samples * 17 + threads)
    plan = [rng.choice(granted)[:2] for _ in range(samples)]
    lat: list[float] = []
    ready = threading.Barrier(threads)

    def run(part: list) -> None:
        mine = []
        raw = engine.raw_connection()
        try:
            ready.wait()
            with raw.driver_connection.cursor() as cursor:
                for doctor, patient in part:
                    t0 = time.perf_counter()
                    cursor.execute(sql, (doctor, patient, now), prepare=True)
                    cursor.fetchall()
                    mine.append(time.perf_counter() - t0)
            raw.rollback()
        finally:
            raw.close()
        lat.extend(mine)

    workers = [threading.Thread(target=run, args=(plan[n::threads],)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    lat.sort()
    return {"p50_us": lat[len(lat) // 2] * 1e6, "p99_us": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=3000, help="decisions per measurement")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--integrity-ab", action="store_true",
                        help="also measure every case with the grant integrity-tag check replaced by a no-op (A/B)")
    args = parser.parse_args()
    if args.quick:
        args.grants, args.samples, args.rounds = 20_000, 400, 1

    from sqlalchemy import create_engine, text

    from vault.db import engine as db

    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    schemas = []
    try:
        setups = {}
        for size in (1000, args.grants):
            schema = f"hvauthz_{secrets.token_hex(4)}"
            schemas.append(schema)
            with admin.connect() as conn:
                conn.execute(text(f"CREATE SCHEMA {schema}"))
            engine = db.make_engine(f"{PG_URL}?options=-csearch_path%3D{schema}")
            db.migrate(engine)
            doctors = [str(uuid.uuid4()) for _ in range(max(50, size // 20))]
            patients = [str(uuid.uuid4()) for _ in range(max(100, size // 2))]
            started = time.perf_counter()
            granted = _fill(engine, size, doctors, patients, dt.datetime.now(UTC))
            print(f"{size:>9,} grants loaded in {time.perf_counter() - started:.1f} s")
            setups[size] = (engine, granted, doctors)
            _measure(engine, granted, doctors, 400, args.threads)  # warm: connections, prepared statements
        # Interleaved rounds (the order flips each round), so a burst of load from other tenants hits both sizes.
        runs: dict[tuple[int, int], list[dict]] = {}
        floors: dict[int, list[dict]] = {}
        print(f"{args.rounds} rounds x {args.samples} decisions per case; load average {os.getloadavg()[0]:.2f}")
        for r in range(args.rounds):
            sizes = (1000, args.grants) if r % 2 == 0 else (args.grants, 1000)
            for threads in (1, args.threads):
                for size in sizes:
                    engine, granted, doctors = setups[size]
                    variants = (True, False) if args.integrity_ab else (True,)
                    for check in variants if r % 2 == 0 else variants[::-1]:  # A/B order flips each round too
                        runs.setdefault((size, threads if check else -threads), []).append(
                            _measure(engine, granted, doctors, args.samples, threads, check=check))
                engine, granted, _ = setups[args.grants]
                floors.setdefault(threads, []).append(_floor(engine, granted, args.samples, threads))
        med = {key: {f: statistics.median(m[f] for m in ms) for f in ("p50_us", "p99_us", "max_us", "per_s")}
               | {"wrong": sum(m["wrong"] for m in ms), "best_p99": min(m["p99_us"] for m in ms)}
               for key, ms in runs.items()}
        for threads in (1, args.threads):
            for size in (1000, args.grants):
                m = med[(size, threads)]
                print(f"{size:>9,} grants, {threads} thread{'s' if threads > 1 else ' '}: p50 {m['p50_us']:5.0f} µs  "
                      f"p99 {m['p99_us']:5.0f} µs (best {m['best_p99']:.0f})  max {m['max_us']:6.0f} µs  "
                      f"{m['per_s']:6.0f} decisions/s  wrong {m['wrong']}")
        if args.integrity_ab:
            print("integrity A/B (same rounds): the grant tag check on vs replaced by a no-op")
            for threads in (1, args.threads):
                for size in (1000, args.grants):
                    on, off = med[(size, threads)], med[(size, -threads)]
                    label = f"{size:>9,} grants, {threads} thread{'s' if threads > 1 else ' '}"
                    print(f"  {label}: p50 {on['p50_us']:5.0f} "
                          f"vs {off['p50_us']:5.0f} µs ({on['p50_us'] / off['p50_us']:.3f}x)  p99 {on['p99_us']:5.0f} "
                          f"vs {off['p99_us']:5.0f} µs ({on['p99_us'] / off['p99_us']:.3f}x)  decisions/s "
                          f"{on['per_s']:6.0f} vs {off['per_s']:6.0f} ({on['per_s'] / off['per_s']:.3f}x)  "
                          f"wrong {on['wrong']}/{off['wrong']}")
        for threads in (1, args.threads):
            f = floors[threads]
            print(f"  floor, bare indexed query at {args.grants:,}, {threads} thread{'s' if threads > 1 else ' '}: "
                  f"p50 {statistics.median(x['p50_us'] for x in f):5.0f} µs  "
                  f"p99 {statistics.median(x['p99_us'] for x in f):5.0f} µs")
        verdicts = []
        for threads in (1, args.threads):
            small, big = med[(1000, threads)], med[(args.grants, threads)]
            ratio = big["p99_us"] / small["p99_us"]
            correct = big["wrong"] == small["wrong"] == 0
            if threads == 1:
                ok = big["p99_us"] <= 1000 and ratio <= 2.0 and correct
                rule = "targets <= 1000 µs and <= 2x, no wrong decision"
            else:
                # Closed-loop threads on this 2-vCPU box (shared with PostgreSQL and other work) queue for the CPU and
                # the GIL: their absolute p99 is the machine's (compare the floor line), so it is printed, and what is
                # judged is that 1M grants cost no more than 1k under the same concurrency, and no wrong decision.
                ok = ratio <= 2.0 and correct
                rule = "target <= 2x, no wrong decision; absolute p99 reported against the floor"
            verdicts.append(ok)
            print(f"{threads} thread{'s' if threads > 1 else ''}: p99 at {args.grants:,} = {big['p99_us']:.0f} µs, "
                  f"{ratio:.2f}x the p99 at 1,000 ({rule}): {'PASS' if ok else 'FAIL'}")
        print(f"result: {'PASS' if all(verdicts) else 'FAIL'}; load average {os.getloadavg()[0]:.2f}")
        for engine, _, _ in setups.values():
            engine.dispose()
    finally:
        with admin.connect() as conn:
            for schema in schemas:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
