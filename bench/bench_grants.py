"""Granting and revoking through the service layer on PostgreSQL (target, issue 4: >= 500 grants/s).

    python bench/bench_grants.py [--grants 2000] [--threads 4] [--quick]

Each grant is a real `vault.sharing.create_grant` (gate decision, scope checks, purpose sealed under the patient's
DEK, signed receipt, audit event, commit) followed later by `revoke_grant` (gate, audit, commit). Fresh schemas and a
temporary data directory; nothing else is touched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PG_URL = os.environ.get("HEALTHVAULT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.grants = 200

    from sqlalchemy import create_engine, text

    from vault import accounts, patients, sharing
    from vault.identifiers import check_digit
    from vault.identity import Identity, RequestContext
    from vault.runtime import init_data_dir, open_vault
    from vault.settings import Settings

    suffix = secrets.token_hex(4)
    data_schema, key_schema = f"hvgr_{suffix}", f"hvgr_keys_{suffix}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {data_schema}"))
    tmp = Path(tempfile.mkdtemp(prefix="hv-grants-"))
    os.environ.pop("HEALTHVAULT_ROOT_KEY", None)
    settings = Settings.load(tmp, database_url=f"{PG_URL}?options=-csearch_path%3D{data_schema}",
                             keystore_url=PG_URL, keystore_schema=key_schema, password_time_cost=1,
                             password_memory_kib=1024, password_parallelism=1)
    try:
        init_data_dir(settings, b"bench passphrase 123", kdf_params={"t": 1, "m": 1024, "p": 1})
        vault = open_vault(settings, b"bench passphrase 123")
        ctx = RequestContext(request_id="bench")
        with vault.session() as session:
            body = "110105" + "19800101" + "123"
            patient_id = patients.register(session, vault, username="bench-patient", password="Str0ng-Passw0rd!",
                                           real_name="测试", id_number=body + check_digit(body),
                                           phone="13800138000", birth_date=None, ctx=ctx)
        doctors = []
        for i in range(20):
            with vault.session() as session:
                doctors.append(accounts.create(session, vault, username=f"bench-dr{i}", password="Str0ng-Passw0rd!",
                                               role="doctor", ctx=ctx).username)
        patient = Identity(account_id="bench-patient-account", role="patient", patient_id=patient_id)
        expires = vault.clock() + dt.timedelta(days=7)
        created: list[str] = []
        lock = threading.Lock()

        def grant_many(count: int, offset: int) -> None:
            for i in range(count):
                with vault.session() as session:
                    view = sharing.create_grant(session, vault, identity=patient, ctx=ctx,
                                                grantee=doctors[(offset + i) % len(doctors)], record_ids=[],
                                                categories=["lab_report"], include_future=True, actions=["view"],
                                                purpose="consult follow-up", consult_ref=None, not_before=None,
                                                expires_at=expires)
                with lock:
                    created.append(view.grant_id)

        def revoke_many(ids: list[str]) -> None:
            for grant_id in ids:
                with vault.session() as session:
                    sharing.revoke_grant(session, vault, identity=patient, ctx=ctx, grant_id=grant_id)

        per = args.grants // args.threads
        started = time.perf_counter()
        workers = [threading.Thread(target=grant_many, args=(per, n * per)) for n in range(args.threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        grant_rate = len(created) / (time.perf_counter() - started)
        started = time.perf_counter()
        chunks = [created[n::args.threads] for n in range(args.threads)]
        workers = [threading.Thread(target=revoke_many, args=(c,)) for c in chunks]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        revoke_rate = len(created) / (time.perf_counter() - started)
        vault.close()
        print(f"service-layer grants on PostgreSQL, {args.threads} threads: create {grant_rate:.0f} grants/s, "
              f"revoke {revoke_rate:.0f} grants/s ({len(created)} each; target >= 500/s: "
              f"{'PASS' if min(grant_rate, revoke_rate) >= 500 else 'FAIL'}); load average {os.getloadavg()[0]:.2f}")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {data_schema} CASCADE"))
            conn.execute(text(f"DROP SCHEMA IF EXISTS {key_schema} CASCADE"))
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
