"""Rewrap throughput: move N record DEKs to their patients' new KEK versions through the real rewrap job, against a
raw AES-GCM baseline measured in the same run.

Setup (not timed): a fresh vault in a temporary directory (SQLite, local root provider sealed with a cheap KDF),
P patients, N record rows whose DEKs are wrapped under KEK version 1 (wrapped with kms internals so the setup does
not take minutes), then a root rotation and a rotation of every KEK.
Timed: `vault.keys.rewrap.rewrap` over everything (patient KEKs under the old root, service keys, patient and record
DEKs), batches of B rows, each batch its own data-database transaction with its audit event, exactly as
`healthvault keys rewrap` runs it.
Baseline: raw AESGCM unwrap + wrap of the same number of 32-byte keys with cached cipher objects, no database.
Target: >= 2,000 record DEKs per second (issue 6). The ratio says how much of the raw crypto rate survives the
database round trips, compare-and-swap updates and audit appends.

With `--kms pkcs11` the root key lives in a SoftHSM2 token made for this run (tests/helpers/softhsm.py: a temporary
token directory, never /etc/softhsm): KEK unwraps and root wraps go through the token, DEK rewraps stay in software.

Usage: python bench/bench_rewrap.py [--n 100000] [--patients 1000] [--batch 1000] [--kms local|pkcs11] [--quick]
       [--json out.json]
Prints a RESULT_JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import insert

TARGET = 2000.0


def _kms_settings(kms: str) -> dict:
    if kms != "pkcs11":
        return {}
    from tests.helpers.softhsm import missing, process_softhsm

    reason = missing()
    if reason:
        raise SystemExit(f"--kms pkcs11 needs SoftHSM2: {reason}")
    hsm = process_softhsm()
    return dict(kms_provider="pkcs11", pkcs11_module=hsm.module, pkcs11_token_label=hsm.token_label,
                pkcs11_pin_file=str(hsm.pin_file), pkcs11_key_label="bench-" + uuid.uuid4().hex[:12])


def _setup(tmp: Path, *, n: int, patients: int, kms: str = "local"):
    os.environ.pop("HEALTHVAULT_ROOT_KEY", None)
    from kms import DataKey
    from kms.wrapping import wrap_dek
    from vault.db.models import Account, Patient, Record
    from vault.identity import Identity, RequestContext
    from vault.runtime import init_data_dir, open_vault
    from vault.settings import Settings

    passphrase = os.urandom(16).hex().encode()
    settings = Settings.load(tmp / "var", password_time_cost=1, password_memory_kib=1024, password_parallelism=1,
                             **_kms_settings(kms))
    init_data_dir(settings, passphrase, kdf_params={"t": 1, "m": 1024, "p": 1})
    vault = open_vault(settings, passphrase)
    keys = vault.keys
    now = vault.clock()
    account_id = str(uuid.uuid4())
    with vault.session() as session:
        session.add(Account(id=account_id, username="bench", password_hash="!", role="sysadmin", created_at=now))
        session.commit()
    patient_ids = [str(uuid.uuid4()) for _ in range(patients)]
    patient_rows = []
    for pid in patient_ids:
        keys.create_patient_key(pid)
        _, wrapped = keys.new_data_key(pid)
        patient_rows.append(dict(id=pid, created_at=now, wrapped_dek=wrapped, real_name_enc=b"-", id_number_enc=b"-",
                                 phone_enc=b"-", birth_date_enc=b"-", id_number_bidx=os.urandom(16),
                                 phone_bidx=os.urandom(16)))
    with vault.session() as session:
        session.execute(insert(Patient), patient_rows)
        session.commit()
    # N record DEKs under KEK v1, wrapped through the manager's own format-2 code (cached KEKs, no key-store query).
    keks = {pid: keys._kek_version(pid, pid.encode(), 1) for pid in patient_ids}
    batch = []
    for i in range(n):
        pid = patient_ids[i % patients]
        dek = DataKey.generate()
        batch.append(dict(id=str(uuid.uuid4()), patient_id=pid, category="other", label="normal",
                          content_type="application/pdf", size_bytes=0, created_at=now, created_by=account_id,
                          wrapped_dek=wrap_dek(pid.encode(), keks[pid], dek.material(), dek.key_id, dek.suite),
                          sha256_enc=b"-"))
        if len(batch) == 5000 or i == n - 1:
            with vault.session() as session:
                session.execute(insert(Record), batch)
                session.commit()
            batch = []
    for kek in keks.values():
        kek.wipe()
    keys.service_key("pseudonym")
    identity, ctx = Identity(account_id="bench", role="operator"), RequestContext(request_id="bench")
    from vault.keys import rotation

    rotation.rotate_root_cli(vault, identity=identity, ctx=ctx, profile="development")
    rotation.rotate_all_keks(vault, identity=identity, ctx=ctx)
    return vault, identity, ctx


def _raw_baseline(n: int, patients: int, repeats: int = 3) -> float:
    """Keys/s of raw AES-GCM unwrap + wrap (32-byte keys, 12-byte nonces, ~60-byte AAD, cached cipher objects)."""
    olds = [AESGCM(os.urandom(32)) for _ in range(patients)]
    news = [AESGCM(os.urandom(32)) for _ in range(patients)]
    aad = b"hv/dek-wrap/v2\0" + b"x" * 36 + b"\0\0\0\1\1" + b"k" * 16
    wrapped = []
    for i in range(n):
        nonce = os.urandom(12)
        wrapped.append((nonce, olds[i % patients].encrypt(nonce, os.urandom(32), aad)))
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i, (nonce, sealed) in enumerate(wrapped):
            dek = olds[i % patients].decrypt(nonce, sealed, aad)
            fresh = os.urandom(12)
            news[i % patients].encrypt(fresh, dek, aad)
        runs.append(time.perf_counter() - start)
    return n / statistics.median(runs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="record DEKs to rewrap")
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--kms", choices=("local", "pkcs11"), default="local", help="root-key provider")
    parser.add_argument("--quick", action="store_true", help="small run for CI (n=3000, 100 patients)")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.patients = min(args.n, 3000), min(args.patients, 100)
    from vault.db.models import Record
    from vault.keys import rewrap
    from vault.keys import status as keystatus

    print(f"python {sys.version.split()[0]}, cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="hv-bench-rewrap-") as tmp:
        t0 = time.perf_counter()
        vault, identity, ctx = _setup(Path(tmp), n=args.n, patients=args.patients, kms=args.kms)
        print(f"setup ({vault.keys.provider_name} provider): {args.n} record DEKs, {args.patients} patients, "
              "root and every KEK rotated "
              f"({time.perf_counter() - t0:.1f} s, not timed)")
        before = keystatus.compute_status(vault)
        start = time.perf_counter()
        job = rewrap.rewrap(vault, identity=identity, ctx=ctx, batch_size=args.batch)
        elapsed = time.perf_counter() - start
        after = keystatus.compute_status(vault)
        with vault.session() as session:
            sample = session.query(Record).limit(50).all()
        for record in sample:  # the moved wraps open
            vault.keys.open_data_key(record.patient_id, record.wrapped_dek)
        vault.close()
    raw = _raw_baseline(args.n, args.patients)
    rate = args.n / elapsed
    ok = rate >= TARGET and after.deks_under_old_kek == 0 and job.failed == 0
    print(f"before: {before.deks_under_old_kek} DEKs and {before.keks_under_old_root} KEKs waiting; "
          f"after: {after.deks_under_old_kek} and {after.keks_under_old_root}")
    print(f"rewrap job: {job.scanned} keys looked at, {job.rewrapped} rewrapped, {job.failed} failed, "
          f"{elapsed:.2f} s")
    print(f"record DEKs rewrapped per second: {rate:,.0f} (target >= {TARGET:,.0f}): {'PASS' if ok else 'FAIL'}")
    print(f"raw AES-GCM unwrap+wrap, same run: {raw:,.0f} keys/s; ratio rewrap/raw {rate / raw:.3f}")
    print(f"load after {os.getloadavg()[0]:.2f}")
    result = {"kms": args.kms, "n": args.n, "patients": args.patients, "batch": args.batch, "seconds": elapsed,
              "deks_per_s": rate,
              "raw_keys_per_s": raw, "ratio": rate / raw, "rewrapped": job.rewrapped, "failed": job.failed,
              "left_under_old_kek": after.deks_under_old_kek, "pass": ok, "load": os.getloadavg()[0]}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print("RESULT_JSON: " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
