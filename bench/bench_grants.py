"""Granting and revoking through the service layer on PostgreSQL (target, issue 4: >= 500 grants/s).

    python bench/bench_grants.py [--grants 2000] [--threads 4] [--patients 64] [--rounds 3] [--quick]

Each grant is a real `vault.sharing.create_grant` (gate decision, scope checks, purpose sealed under the patient's
DEK, signed receipt, audit event, commit) followed later by `revoke_grant` (gate, audit, commit), each in its own
session and transaction, from `--threads` threads. Fresh schemas and a temporary data directory; nothing else is
touched. `synchronous_commit` stays on: every grant is durable and audited before it is acknowledged.

Two workloads, same run, each repeated `--rounds` times (median, best in brackets):

* **many patients** (the target): grants come from `--patients` patients in turn, as a service's load does. Their
  audit events spread over the audit chains (`audit_chains`, 16 on PostgreSQL), so commits overlap.
* **one patient** (for reference): every grant is the same patient's. All its audit events go to one chain, whose
  head row is locked from the append to the commit, so this figure is bounded by one commit's latency on the disk
  (~0.3-4 ms here: 250-3,000/s) whatever the code does; it is printed, not judged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PG_URL = os.environ.get("HEALTHVAULT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TARGET = 500


def _run(threads: int, work: list, fn) -> float:
    """Items/s for `fn(item)` over `work`, split across threads."""
    chunks = [work[n::threads] for n in range(threads)]
    errors: list[BaseException] = []

    def loop(items: list) -> None:
        try:
            for item in items:
                fn(item)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=loop, args=(c,)) for c in chunks]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return len(work) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=2000, help="grants created (and revoked) per round")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--patients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.grants, args.rounds, args.patients = 200, 1, 16

    from sqlalchemy import create_engine, text

    from vault.accounts import service as accounts
    from vault.identity import Identity, RequestContext
    from vault.patients import privacy
    from vault.patients import service as patients
    from vault.patients.identifiers import check_digit
    from vault.runtime import init_data_dir, open_vault
    from vault.settings import Settings
    from vault.sharing import service as sharing

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
        consents = privacy.Choices(health_data=True, id_number=True,
                                   notice_version=privacy.current_notice(vault).version)
        people: list[Identity] = []
        for n in range(max(1, args.patients)):
            body = "110105" + "19800101" + f"{n:03d}"
            with vault.session() as session:
                patient_id = patients.register(session, vault, username=f"bench-patient{n}",
                                               password="Str0ng-Passw0rd!", real_name="测试",
                                               id_number=body + check_digit(body), phone="13800138000",
                                               birth_date=None, ctx=ctx, consents=consents)
            people.append(Identity(account_id=f"bench-patient{n}-account", role="patient", patient_id=patient_id))
        doctors = []
        for i in range(20):
            with vault.session() as session:
                doctors.append(accounts.create(session, vault, username=f"bench-dr{i}", password="Str0ng-Passw0rd!",
                                               role="doctor", ctx=ctx).username)
        expires = vault.clock() + dt.timedelta(days=7)
        lock = threading.Lock()

        def one_round(who: list[Identity]) -> tuple[float, float]:
            created: list[tuple[Identity, str]] = []

            def grant(i: int) -> None:
                patient = who[i % len(who)]
                with vault.session() as session:
                    view = sharing.create_grant(session, vault, identity=patient, ctx=ctx,
                                                grantee=doctors[i % len(doctors)], record_ids=[],
                                                categories=["lab_report"], include_future=True, actions=["view"],
                                                purpose="consult follow-up", consult_ref=None, not_before=None,
                                                expires_at=expires)
                with lock:
                    created.append((patient, view.grant_id))

            def revoke(item: tuple[Identity, str]) -> None:
                with vault.session() as session:
                    view = sharing.revoke_grant(session, vault, identity=item[0], ctx=ctx, grant_id=item[1])
                if view.active or view.revoked_at is None:
                    raise AssertionError("grant still active after revoke")

            grant_rate = _run(args.threads, list(range(args.grants)), grant)
            revoke_rate = _run(args.threads, list(created), revoke)
            return grant_rate, revoke_rate

        one_round(people)  # warm-up: connections, prepared statements, key caches
        print(f"service-layer grants on PostgreSQL, {args.threads} threads, {args.grants} grants per round, "
              f"{args.rounds} rounds; load average before {os.getloadavg()[0]:.2f}")
        verdict = True
        for label, who, judged in ((f"many patients ({len(people)})", people, True),
                                   ("one patient (one audit chain)", people[:1], False)):
            rates = [one_round(who) for _ in range(args.rounds)]
            create = statistics.median(r[0] for r in rates)
            revoke = statistics.median(r[1] for r in rates)
            ok = min(create, revoke) >= TARGET
            verdict = verdict and (ok or not judged)
            print(f"  {label:32s} create {create:6.0f}/s ({max(r[0] for r in rates):.0f})  "
                  f"revoke {revoke:6.0f}/s ({max(r[1] for r in rates):.0f})"
                  + (f"  target >= {TARGET}/s: {'PASS' if ok else 'FAIL'}" if judged else "  (reference)"))
        vault.close()
        print(f"result: {'PASS' if verdict else 'FAIL'}; load average after {os.getloadavg()[0]:.2f}")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {data_schema} CASCADE"))
            conn.execute(text(f"DROP SCHEMA IF EXISTS {key_schema} CASCADE"))
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
