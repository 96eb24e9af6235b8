"""Chained audit append vs a plain INSERT of the same row, on the real PostgreSQL, with concurrent writers.

    python bench/bench_audit_append.py [--writers 8] [--seconds 5] [--rounds 3] [--chains 16] [--quick]

Each writer is its own process with its own connection; every row is its own transaction (as in the service, where
each audited request commits). Rounds alternate plain and chained so both see the same disk phases; the ratio is
taken per round and the median reported. Target (issue 3): chained >= 50% of plain rows/s with 8 writers.
A fresh schema is created and dropped; nothing else on the server is touched.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PG_URL = os.environ.get("HEALTHVAULT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _row(i: int) -> dict:
    return dict(actor=secrets.token_hex(16), actor_role="doctor", action="record.read", outcome="allow",
                resource_type="record", resource_id=str(uuid.uuid4()), patient=secrets.token_hex(16),
                reason="grant", grant_id=str(uuid.uuid4()), request_id=secrets.token_hex(12),
                client_addr="10.0.0.7", user_agent="bench/1.0")


def _writer(mode: str, url: str, chains: int, seconds: float, ready, go, result) -> None:
    import datetime as dt

    from sqlalchemy import create_engine, insert, text
    from sqlalchemy.orm import Session

    from audit import trail

    engine = create_engine(url, pool_size=1, hide_parameters=True)
    utc = dt.UTC
    count = 0
    plain_insert = None
    if mode == "plain":
        from sqlalchemy import MetaData, Table, bindparam

        plain = Table("bench_plain", MetaData(), autoload_with=engine)
        # Built once with bind parameters, exactly like the chained path's insert: the baseline is the cheapest
        # way to write the same row, so the ratio shows the cost of chaining and nothing else.
        plain_insert = insert(plain).values({c: bindparam(c) for c in trail._INSERT_COLUMNS})
    with engine.connect() as conn:  # connect before the clock starts
        conn.execute(text("SELECT 1"))
    ready.put(1)
    go.wait()
    deadline = time.time() + seconds
    with Session(engine) as session:
        while time.time() < deadline:
            fields = _row(count)
            now = dt.datetime.now(utc)
            if mode == "plain":
                session.connection().execute(plain_insert, dict(
                    chain_id=0, seq=secrets.randbits(62), occurred_at=now, actor=fields["actor"],
                    actor_role=fields["actor_role"], action=fields["action"], resource_type=fields["resource_type"],
                    resource_id=fields["resource_id"], patient_pseudonym=fields["patient"],
                    outcome=fields["outcome"], reason=fields["reason"], grant_id=fields["grant_id"],
                    request_id=fields["request_id"], client_addr=fields["client_addr"],
                    user_agent=fields["user_agent"], prev_hash="0" * 64, hash=secrets.token_hex(32)))
            else:
                trail.append(session, trail.NewEvent(**fields), now=now, chains=chains)
            session.commit()
            count += 1
    engine.dispose()
    result.put(count)


def _round(mode: str, url: str, writers: int, chains: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    queue, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_writer, args=(mode, url, chains, seconds, ready, go, queue)) for _ in range(writers)]
    for p in procs:
        p.start()
    for _ in procs:  # every writer imported and connected: start them together
        ready.get()
    go.set()
    total = sum(queue.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.writers = 1.0, 1, 4

    from sqlalchemy import create_engine, text

    from audit import trail
    from vault.db import engine as db

    schema = f"hvbench_{secrets.token_hex(4)}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        engine = db.make_engine(url)
        db.migrate(engine)
        from sqlalchemy.orm import Session

        with Session(engine) as session:
            trail.ensure_chains(session, args.chains)
            session.commit()
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE bench_plain (LIKE audit_events INCLUDING ALL)")
        engine.dispose()
        print(f"PostgreSQL chained audit append vs plain INSERT: {args.writers} writer processes, "
              f"{args.chains} chains, {args.rounds} x {args.seconds:.0f} s rounds; load average "
              f"{os.getloadavg()[0]:.2f}")
        ratios, plains, chaineds = [], [], []
        for n in range(args.rounds):
            plain = _round("plain", url, args.writers, args.chains, args.seconds)
            chained = _round("chained", url, args.writers, args.chains, args.seconds)
            plains.append(plain)
            chaineds.append(chained)
            ratios.append(chained / plain)
            print(f"  round {n + 1}: plain {plain:8.0f} rows/s   chained {chained:8.0f} rows/s   "
                  f"ratio {chained / plain:.2f}")
        ratio = statistics.median(ratios)
        print(f"median: plain {statistics.median(plains):.0f} rows/s, chained {statistics.median(chaineds):.0f} "
              f"rows/s, ratio {ratio:.2f} (target >= 0.50: {'PASS' if ratio >= 0.5 else 'FAIL'})")
        # The chains the benchmark wrote must verify.
        from sqlalchemy import select

        from audit import verify
        from audit.models import AuditEvent, ChainHead

        engine = db.make_engine(url)
        checked = 0
        with Session(engine) as session:
            for head in session.scalars(select(ChainHead)):
                prev, expected_seq = trail.GENESIS, 0
                for row in session.scalars(select(AuditEvent).where(AuditEvent.chain_id == head.chain_id)
                                           .order_by(AuditEvent.seq).execution_options(yield_per=5000)):
                    assert row.prev_hash == prev and row.seq == expected_seq
                    expected_seq += 1
                    assert verify.event_hash(verify.canonical_bytes(trail.canonical_event(row))).hex() == row.hash
                    prev = row.hash
                    checked += 1
        engine.dispose()
        print(f"chains verified intact: {checked} events, no fork, no gap")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
