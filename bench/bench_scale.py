#!/usr/bin/env python3
"""Capacity at scale (issue 17): authenticated record reads on a full PostgreSQL vs an empty one, 1 vs 2 server
processes, and the database size per patient and per audit event.

    python bench/bench_scale.py [--patients 1000] [--records 10000] [--grants 10000] [--events 50000]
                                [--full] [--seconds 4] [--rounds 3] [--connections 32] [--s3] [--json FILE]

`--full` is the issue's size: 100,000 patients, 1,000,000 records, 1,000,000 grants, 5,000,000 audit events (73
minutes of loading with SeaweedFS on a 2-core machine, 6.4 GB of PostgreSQL; the default is 1 % of it). Steps, all
in one run:

1. Two vaults in fresh schemas of the PostgreSQL at $HEALTHVAULT_BENCH_PG_URL: "empty" and "full". In each, one
   patient registered through the API with one uploaded record: the record that is read.
2. The bulk loader fills "full" in the real formats (no shortcut a reader would notice on the read path): each
   patient has a KEK in the key store, a profile sealed under its own DEK with blind indexes and an account with an
   argon2id hash (one real hash per batch of 1,000 accounts, shared: hashing 100,000 passwords one by one is hours of
   CPU and the read path never reads it); each record a DEK wrapped by its patient's KEK, sealed label/title/SHA-256
   and a small blob sealed with the streaming AEAD in the blob store (SeaweedFS with --s3, else the data directory);
   each grant a sealed purpose and a signed receipt; each audit event is hash-chained into the K chains and is a leaf
   of the Merkle log, in batches. Keys come from the key manager's batch calls (one key-store round trip per batch of
   1,000) and blobs are written by 3 processes while the next batch is sealed.
3. For each round (order alternating): the closed-loop loader (bench/loadgen.py, own process) reads the record
   (`GET /v1/records/{id}`, bearer token) against a server on "empty" and one on "full" (1 process each), then a
   `serve --workers 2` on "full". Prints req/s, p50/p99 and server CPU per request (all server processes).
4. Sizes: pg_total_relation_size of the patient tables / patients and of audit_events + audit_leaves / events.

Targets: full/empty ≥ 0.80; 2 processes ≥ 1.6 × 1 process, or, where this 2-core machine caps it (the loader and
PostgreSQL share the same cores), the CPU per request that shows why. Schemas and data directories are
removed at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import hashlib
import json
import multiprocessing
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import loadgen  # noqa: E402
from _server import PG_URL, VaultServer, drop_pg_schema, nth_id_number, pg_env, pg_schema  # noqa: E402

if TYPE_CHECKING:
    from vault.blobs.store import BlobStore

PASSPHRASE = b"bench passphrase for scale"
PASSWORD = "Str0ng-Passw0rd!"
BATCH = 1000
BLOB_WRITERS, BLOB_CHUNK = 3, 100  # 3 processes: ~780 small PUTs/s into SeaweedFS on 2 cores, against ~480 from one


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------------------------------- vaults
class Deployment:
    """One vault in its own schema (data) and key schema, plus its data directory."""

    def __init__(self, name: str, tmp: Path, blob_url: str | None) -> None:
        from vault.runtime import init_data_dir, open_vault
        from vault.settings import Settings

        self.name = name
        self.schema = pg_schema(f"hvscale_{name}")
        self.url = pg_env(self.schema)["HEALTHVAULT_DATABASE_URL"]
        self.data_dir = tmp / name
        self.blob_url = blob_url
        self.settings = Settings.load(self.data_dir, database_url=self.url, keystore_url=PG_URL,
                                      keystore_schema=f"{self.schema}_keys", blob_url=blob_url,
                                      password_time_cost=1, password_memory_kib=1024, password_parallelism=1)
        init_data_dir(self.settings, PASSPHRASE, kdf_params={"t": 1, "m": 1024, "p": 1})
        self.vault = open_vault(self.settings, PASSPHRASE)

    def env(self) -> dict[str, str]:
        """The HEALTHVAULT_* variables of a server on this vault (VaultServer drops any inherited ones)."""
        env = {**pg_env(self.schema), "HEALTHVAULT_PASSPHRASE": PASSPHRASE.decode(),
               "HEALTHVAULT_DATA_DIR": str(self.data_dir)}
        if self.blob_url:
            env["HEALTHVAULT_BLOB_URL"] = self.blob_url
        env["HEALTHVAULT_AUDIT_CHECKPOINT_EVERY_SECONDS"] = "2"  # checkpoints through every run, full or empty alike
        return env

    def drop(self) -> None:
        self.vault.close()
        drop_pg_schema(self.schema)


def readers(dep: Deployment, count: int) -> list[tuple[str, str]]:
    """`count` patients registered through the API, each with one record: [(username, record path)].

    The load is spread over them as a clinic's reads are spread over patients: each patient's reads are audited into
    the chain its pseudonym picks, and a chain's head is locked until the reading transaction commits, so reads of
    one patient alone serialise on one chain lock (`--readers 1` shows that case)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.helpers import login, pdf_bytes, register, upload

    out = []
    with TestClient(create_app(dep.vault)) as client:
        for n in range(count):
            username = f"reader-{dep.name}-{n}"
            register(client, username=username)
            headers = login(client, username)
            created = upload(client, headers, pdf_bytes(f"scale {n}"), category="exam_report",
                             content_type="application/pdf")
            assert created.status_code == 201, created.text
            out.append((username, f"/v1/records/{created.json()['record_id']}"))
    return out


def signed_in(dep: Deployment, people: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """[(record path, [bearer header])] for `readers`, signed in now: a token idle for `idle_timeout_seconds` (15
    minutes) is dead, and loading the full database takes longer than that."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.helpers import login

    with TestClient(create_app(dep.vault)) as client:
        return [(path, [f"{name}: {value}" for name, value in login(client, username).items()])
                for username, path in people]


# --------------------------------------------------------------------------------------------------- bulk loader
_blob_writer: tuple[BlobStore, concurrent.futures.ThreadPoolExecutor] | None = None


def _blob_writer_start(blob_url: str | None, blob_dir: str) -> None:
    """In a blob-writer process: the vault's blob store (S3 or the data directory) and 8 threads to write with."""
    global _blob_writer
    from vault.blobs.store import open_store

    _blob_writer = (open_store(url=blob_url, local_dir=Path(blob_dir)), concurrent.futures.ThreadPoolExecutor(8))


def _write_blobs(blobs: list[tuple[str, bytes]]) -> int:
    """Write already-sealed blobs [(record id, ciphertext)] through the store's own create/commit path."""
    assert _blob_writer is not None
    store, threads = _blob_writer

    def put(item: tuple[str, bytes]) -> None:
        temp = store.create_temp(item[0])
        temp.write(item[1])
        temp.commit(item[0])

    return len(list(threads.map(put, blobs)))


def fill(dep: Deployment, *, patients: int, records: int, grants: int, events: int, seed: int = 1) -> dict:
    from sqlalchemy import insert, select, update

    from audit import trail, verify
    from audit.models import AuditEvent, ChainHead, Leaf
    from consent.models import Grant
    from kms.stream import StreamEncryptor
    from vault import fields
    from vault.access import audit_append, integrity
    from vault.accounts import service as accounts
    from vault.db.models import Account, Patient, Record
    from vault.patients import service as patient_service
    from vault.records.uploads import blob_aad
    from vault.sharing import receipt as grant_receipt

    vault = dep.vault
    rng = random.Random(seed)
    now = vault.clock()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    # A few doctors (the grantees), then the patients with their accounts.
    doctors = []
    with vault.session() as session:
        for d in range(min(200, max(1, grants // 1000 or 1))):
            doctor = accounts.build(vault, username=f"bulk-dr-{d}", password=PASSWORD, role="doctor")
            session.add(doctor)
            doctors.append(doctor.id)
        session.commit()
    patient_rows: list[tuple[str, str, bytes]] = []  # (patient id, account id, wrapped profile DEK)
    for start in range(0, patients, BATCH):
        rows, account_rows = [], []
        # One real argon2id hash (the service's parameters) per batch, shared by the batch's accounts: hashing 100,000
        # passwords one by one is hours of CPU here, and nothing on the measured read path reads a password hash.
        batch_hash = vault.passwords.hash(PASSWORD)
        pids = [str(uuid.uuid4()) for _ in range(start, min(patients, start + BATCH))]
        vault.keys.create_patient_keys(pids)  # the batch's KEKs in one key-store transaction
        for i, pid, (dek, wrapped) in zip(range(start, start + len(pids)), pids, vault.keys.new_data_keys(pids),
                                          strict=True):
            id_number, phone = nth_id_number(i), f"139{i:08d}"
            where = dict(table="patients", row_id=pid, patient_id=pid)
            rows.append(dict(
                id=pid, created_at=now, wrapped_dek=wrapped,
                real_name_enc=fields.seal(dek, f"批量{i}", column="real_name", **where),
                id_number_enc=fields.seal(dek, id_number, column="id_number", **where),
                phone_enc=fields.seal(dek, phone, column="phone", **where),
                birth_date_enc=fields.seal(dek, f"{id_number[6:10]}-{id_number[10:12]}-{id_number[12:14]}",
                                           column="birth_date", **where),
                id_number_bidx=patient_service.id_number_index(vault, id_number),
                phone_bidx=patient_service.phone_index(vault, phone)))
            account = Account(id=str(uuid.uuid4()), username=f"bulk-{i}", password_hash=batch_hash, role="patient",
                              patient_id=pid, is_active=True, must_change_password=False, created_at=now)
            account_rows.append(account)
            patient_rows.append((pid, account.id, wrapped))
        with vault.session() as session:
            session.execute(insert(Patient), rows)
            session.add_all(account_rows)
            session.commit()
        print(f"  patients {min(patients, start + BATCH)}/{patients}", flush=True)
    timings["patients_s"] = time.perf_counter() - started

    # Records: a DEK each, sealed fields, a small sealed blob. The blobs are written by BLOB_WRITERS processes of 8
    # threads each (one boto3 process tops out at ~480 small PUTs/s here, its threads sharing one GIL); a batch's
    # rows are inserted once its blobs are all written, while the next batch is being sealed.
    started = time.perf_counter()
    writers = concurrent.futures.ProcessPoolExecutor(
        BLOB_WRITERS, mp_context=multiprocessing.get_context("spawn"), initializer=_blob_writer_start,
        initargs=(dep.settings.blob_url, str(dep.settings.blob_dir)))
    pending: tuple[list[dict], list[concurrent.futures.Future[int]]] | None = None

    def insert_when_written(batch: tuple[list[dict], list[concurrent.futures.Future[int]]]) -> None:
        for future in batch[1]:
            future.result()
        with vault.session() as session:
            session.execute(insert(Record), batch[0])
            session.commit()

    for start in range(0, records, BATCH):
        rows, blobs = [], []
        numbers = range(start, min(records, start + BATCH))
        owners = [patient_rows[n % len(patient_rows)] for n in numbers]
        # The batch's DEKs, reading the key store once (as many single new_data_key calls would, one query each).
        for n, (pid, account_id, _wrapped), (dek, wrapped) in zip(
                numbers, owners, vault.keys.new_data_keys(owner[0] for owner in owners), strict=True):
            rid = str(uuid.uuid4())
            plain = b"%PDF-1.4\n" + rng.randbytes(900) + b"\n%%EOF\n"
            encryptor = StreamEncryptor(dek, blob_aad(record_id=rid, patient_id=pid))
            blobs.append((rid, encryptor.update(plain) + encryptor.finalize()))
            where = dict(table="records", row_id=rid, patient_id=pid)
            rows.append(dict(
                id=rid, patient_id=pid, category="exam_report", label="normal",
                label_enc=fields.seal(dek, "normal", column="label", **where), content_type="application/pdf",
                size_bytes=len(plain), created_at=now - dt.timedelta(seconds=n), created_by=account_id,
                wrapped_dek=wrapped, title_enc=fields.seal(dek, f"检查报告 {n}", column="title", **where),
                sha256_enc=fields.seal(dek, hashlib.sha256(plain).digest(), column="sha256", **where)))
        written = [writers.submit(_write_blobs, blobs[i:i + BLOB_CHUNK]) for i in range(0, len(blobs), BLOB_CHUNK)]
        if pending is not None:
            insert_when_written(pending)
        pending = (rows, written)
        if (start // BATCH) % 10 == 0:
            print(f"  records {min(records, start + BATCH)}/{records}", flush=True)
    if pending is not None:
        insert_when_written(pending)
    writers.shutdown()
    timings["records_s"] = time.perf_counter() - started

    # Grants: sealed purpose (under the patient's profile DEK), a signed receipt committing to the purpose under a
    # sealed per-grant salt, and the integrity tag, as the service writes them.
    started = time.perf_counter()
    grant_table = Grant.__table__
    for start in range(0, grants, BATCH):
        rows = []
        for n in range(start, min(grants, start + BATCH)):
            pid, _account, wrapped = patient_rows[n % len(patient_rows)]
            dek = vault.keys.open_data_key(pid, wrapped)
            gid, grantee = str(uuid.uuid4()), doctors[n % len(doctors)]
            purpose = f"复诊咨询 consult {n}"
            not_before, expires = now - dt.timedelta(days=1), now + dt.timedelta(days=20)
            receipt, salt_enc = grant_receipt.issue(
                vault, dek=dek, grant_id=gid, patient_id=pid, grantee_id=grantee, grantee_role="doctor",
                record_ids=[], categories=["exam_report", "lab_report"], include_future=True, actions=["view"],
                purpose=purpose, consult_ref=None, not_before=not_before, expires_at=expires, now=now)
            row = dict(
                id=gid, patient_id=pid, grantee_id=grantee, record_ids="[]",
                categories='["exam_report", "lab_report"]', include_future=True, actions='["view"]',
                purpose_enc=fields.seal(dek, purpose, table="grants", column="purpose", row_id=gid, patient_id=pid),
                purpose_salt_enc=salt_enc, consult_ref=None, not_before=not_before, expires_at=expires,
                created_at=now, revoked_at=None, receipt=receipt)
            row["integrity_mac"] = integrity.seal_grant(vault, SimpleNamespace(**row), revoked_at=None)
            rows.append(row)
        with vault.session() as session:
            session.execute(insert(grant_table), rows)
            session.commit()
    timings["grants_s"] = time.perf_counter() - started

    # Audit events: chained per chain (hash of the canonical event and the previous hash), each a Merkle leaf.
    started = time.perf_counter()
    with vault.session() as session:
        heads = {h.chain_id: [h.seq, h.hash] for h in session.scalars(select(ChainHead))}
        leaf_index = session.scalar(select(Leaf.leaf_index).order_by(Leaf.leaf_index.desc()).limit(1))
    leaf_index = -1 if leaf_index is None else leaf_index
    chains = sorted(heads)
    actions = ("record.read", "record.download", "record.list", "patient.read", "record.create")
    for start in range(0, events, BATCH * 5):
        rows, leaves = [], []
        for n in range(start, min(events, start + BATCH * 5)):
            pid, account_id, _wrapped = patient_rows[n % len(patient_rows)]
            chain = trail.chain_for(audit_append.patient_pseudonym(vault, pid), len(chains))
            chain = chain if chain in heads else chains[n % len(chains)]
            seq, prev = heads[chain][0] + 1, heads[chain][1]
            values = dict(chain_id=chain, seq=seq, occurred_at=now - dt.timedelta(milliseconds=events - n),
                          actor=audit_append.actor_pseudonym(vault, account_id), actor_role="patient",
                          action=actions[n % len(actions)], resource_type="record", resource_id=str(uuid.uuid4()),
                          patient_pseudonym=audit_append.patient_pseudonym(vault, pid), outcome="allow",
                          reason="own", grant_id=None, request_id=secrets.token_hex(12), client_addr="10.0.0.1",
                          user_agent="Mozilla/5.0 (bulk)", prev_hash=prev)
            values["hash"] = verify.event_hash(verify.canonical_bytes(trail._canonical(values))).hex()
            heads[chain] = [seq, values["hash"]]
            rows.append(values)
            leaf_index += 1
            leaves.append(dict(leaf_index=leaf_index, chain_id=chain, seq=seq,
                               event_hash=bytes.fromhex(values["hash"])))
        with vault.session() as session:
            session.execute(insert(AuditEvent), rows)
            session.execute(insert(Leaf), leaves)
            for chain_id, (seq, head_hash) in heads.items():
                session.execute(update(ChainHead).where(ChainHead.chain_id == chain_id)
                                .values(seq=seq, hash=head_hash, integrated_seq=seq))
            session.commit()
        print(f"  audit events {min(events, start + BATCH * 5)}/{events}", flush=True)
    timings["events_s"] = time.perf_counter() - started
    return timings


def sizes(dep: Deployment) -> dict:
    from sqlalchemy import text

    with dep.vault.engine.connect() as conn:
        def size(*tables: str) -> int:
            return sum(conn.execute(text("SELECT pg_total_relation_size(:t)"), {"t": t}).scalar() for t in tables)

        def count(table: str) -> int:
            return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()

        out = {"patients": count("patients"), "records": count("records"), "grants": count("grants"),
               "audit_events": count("audit_events"),
               "bytes_patient_tables": size("patients", "accounts", "consents"),
               "bytes_records": size("records"), "bytes_grants": size("grants"),
               "bytes_audit": size("audit_events", "audit_leaves"),
               "bytes_database_schema": conn.execute(text(
                   "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
                   "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'")).scalar()}
    out["bytes_per_patient"] = out["bytes_patient_tables"] / max(1, out["patients"])
    out["bytes_per_record"] = out["bytes_records"] / max(1, out["records"])
    out["bytes_per_audit_event"] = out["bytes_audit"] / max(1, out["audit_events"])
    return out


# --------------------------------------------------------------------------------------------------- servers
def start_server(dep: Deployment, workers: int, first: tuple[str, list[str]]) -> VaultServer:
    """A server (`workers` processes) on the vault of `dep`, once its checkpoint leader has signed a checkpoint over
    the whole trail: one read (`first`: path and header lines) puts an event in the trail, then the bench waits for
    the checkpoint lag, read from /metrics, to be 0 again. The leader's first checkpoint builds its copy of the
    Merkle log (millions of leaves when full): a start-up cost, kept out of the measured window."""
    server = VaultServer(env=dep.env(), workers=workers, init=False, start_timeout=120)
    server.start()
    path, header_lines = first
    headers = dict(line.split(": ", 1) for line in header_lines)
    status, _body = server.request("GET", path, headers=headers, timeout=60)
    assert status == 200, f"the first read answered {status}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        _status, body = server.request("GET", "/metrics", timeout=30)
        text = body.decode() if isinstance(body, bytes) else ""
        lag = next((line.split()[-1] for line in text.splitlines()
                    if line.startswith("healthvault_audit_checkpoint_lag_events ")), "1")
        if float(lag) == 0:
            return server
        time.sleep(0.5)
    server.stop()
    raise RuntimeError("the checkpoint leader did not catch up with the trail within 600 s")


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat via psutil."""
    import psutil

    t = psutil.cpu_times()
    return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))


def _postgres_cpu_seconds() -> dict[int, float]:
    """CPU seconds of every PostgreSQL process on this machine (the backends the servers use among them)."""
    import psutil

    out: dict[int, float] = {}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        times = proc.info.get("cpu_times")
        if times is not None and (proc.info.get("name") or "").startswith("postgres"):
            out[proc.pid] = times.user + times.system
    return out


def measure(server: VaultServer, targets: list[tuple[str, list[str]]], *, connections: int, seconds: float,
            warmup: float) -> dict:
    """The loader's figures plus where the CPU went: per request, the server processes, PostgreSQL, the loader, and
    everything else on the machine; and how busy the machine's cores were (the cap on 2 processes, issue 17)."""
    before, pg_before, busy_before, wall_before = (server.cpu_seconds(), _postgres_cpu_seconds(),
                                                   _machine_busy_seconds(), time.monotonic())
    result = loadgen.run_subprocess(server.port, targets[0][0], targets=targets, connections=connections,
                                    seconds=seconds, warmup=warmup)
    wall = time.monotonic() - wall_before
    cpu = server.cpu_seconds() - before  # every server process, over warm-up and window alike
    pg_after = _postgres_cpu_seconds()
    pg = sum(value - pg_before.get(pid, 0.0) for pid, value in pg_after.items())
    busy = _machine_busy_seconds() - busy_before
    total = result["rps"] * (seconds + warmup)  # requests in both, at the measured rate
    per = (lambda value: value / total * 1e6 if total else None)
    loader = (result.get("client_cpu_us_per_request") or 0.0) * 1e-6 * total
    result["server_cpu_us_per_request"] = per(cpu)
    result["postgres_cpu_us_per_request"] = per(pg)
    result["loader_cpu_us_per_request"] = result.get("client_cpu_us_per_request")
    result["other_cpu_us_per_request"] = per(max(0.0, busy - cpu - pg - loader))
    result["machine_cpu_us_per_request"] = per(busy)
    result["machine_busy_share"] = busy / ((os.cpu_count() or 1) * wall) if wall else None
    result["server_cores_used"] = cpu / wall if wall else None
    return result


def explain_cap(med: dict, cpus: int) -> list[str]:
    """Why 2 processes do or do not reach 1.6x one on this machine, from the measured CPU per request: the workload's
    own CPU (server processes + PostgreSQL + the loader) per request bounds what `cpus` cores can serve."""
    one, two = med["full-1"], med["full-2"]
    lines = []

    def workload(m: dict) -> float:
        return sum(m.get(key) or 0.0 for key in ("server_cpu_us_per_request", "postgres_cpu_us_per_request",
                                                   "loader_cpu_us_per_request"))

    for name, m in (("1 process", one), ("2 processes", two)):
        need = workload(m)
        lines.append(
            f"  {name:11s}: CPU per request: server {m['server_cpu_us_per_request']:.0f} + PostgreSQL "
            f"{m['postgres_cpu_us_per_request']:.0f} + loader {m['loader_cpu_us_per_request']:.0f} = {need:.0f} µs "
            f"(other programs on the machine: {m['other_cpu_us_per_request']:.0f} µs); cores busy "
            f"{(m['machine_busy_share'] or 0) * 100:.0f} % of {cpus}; the server used {m['server_cores_used']:.2f} "
            f"cores; ceiling of {cpus} cores for this workload {cpus * 1e6 / need if need else 0:.0f} req/s, "
            f"measured {m['rps']:.0f}")
    needed = 1.6 * one["rps"] * workload(two) * 1e-6
    others = (two.get("other_cpu_us_per_request") or 0.0) * two["rps"] * 1e-6  # cores other programs took
    free = cpus - others
    lines.append(f"  1.6x one process = {1.6 * one['rps']:.0f} req/s would need {needed:.2f} cores at the 2-process "
                 f"CPU per request; the machine has {cpus}, of which other programs took {others:.2f}: "
                 + ("capped by the machine's cores, not by the server" if needed > free * 0.9
                    else "not a machine cap — the server is the limit"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--grants", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--full", action="store_true", help="100k patients, 1M records, 1M grants, 5M events")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 50/200/200/1000, 1 round of 1 s")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--readers", type=int, default=16,
                        help="patients whose records are read, the connections spread over them (1: one patient)")
    parser.add_argument("--s3", action="store_true", help="blobs in a SeaweedFS started for the run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.full:
        args.patients, args.records, args.grants, args.events = 100_000, 1_000_000, 1_000_000, 5_000_000
    if args.quick:
        args.patients, args.records, args.grants, args.events = 50, 200, 200, 1000
        args.seconds, args.rounds, args.warmup, args.connections, args.readers = 1.0, 1, 0.3, 8, 2
    os.environ.pop("HEALTHVAULT_ROOT_KEY", None)
    tmp = Path(tempfile.mkdtemp(prefix="hv-bench-scale-"))
    blob_url = None
    weed = None
    if args.s3:
        from tests.helpers import seaweed

        weed = seaweed.process_seaweed()
        blob_url = weed.blob_url()
    print(f"bench_scale: {args.patients} patients, {args.records} records, {args.grants} grants, {args.events} audit "
          f"events; {args.rounds} round(s) x {args.seconds:g} s, {args.connections} connections over "
          f"{args.readers} patients' records; blobs in "
          f"{'SeaweedFS' if blob_url else 'the data directory'}; {os.cpu_count()} CPUs, load {_loadavg()}", flush=True)
    empty = Deployment("empty", tmp, blob_url and weed.blob_url())
    full = Deployment("full", tmp, blob_url)
    report: dict = {"bench": "scale", "sizes_requested": vars(args) | {"json": None}}
    try:
        empty_people, full_people = readers(empty, args.readers), readers(full, args.readers)
        print("loading ...", flush=True)
        report["load_seconds"] = fill(full, patients=args.patients, records=args.records, grants=args.grants,
                                      events=args.events)
        print(f"loaded in {sum(report['load_seconds'].values()):.0f} s: {report['load_seconds']}", flush=True)
        with full.vault.engine.begin() as conn:
            from sqlalchemy import text

            conn.execute(text("ANALYZE"))
        report["sizes"] = sizes(full)
        report["sizes_empty"] = sizes(empty)
        empty_targets, full_targets = signed_in(empty, empty_people), signed_in(full, full_people)
        cases = {"empty-1": (empty, 1, empty_targets), "full-1": (full, 1, full_targets),
                 "full-2": (full, 2, full_targets)}
        runs: dict[str, list[dict]] = {name: [] for name in cases}
        for index in range(args.rounds):
            order = list(cases) if index % 2 == 0 else list(reversed(cases))
            for name in order:
                dep, workers, targets = cases[name]
                server = start_server(dep, workers, targets[0])
                try:
                    result = measure(server, targets, connections=args.connections, seconds=args.seconds,
                                     warmup=args.warmup)
                finally:
                    server.stop()
                runs[name].append(result)
                print(f"round {index + 1} {name:8s} {result['rps']:8.1f} req/s  p50 {result.get('p50_ms')} ms  "
                      f"p99 {result.get('p99_ms')} ms  server CPU/request "
                      f"{(result['server_cpu_us_per_request'] or 0):.0f} µs, PostgreSQL "
                      f"{(result['postgres_cpu_us_per_request'] or 0):.0f} µs, cores busy "
                      f"{(result['machine_busy_share'] or 0) * 100:.0f} %  errors {result.get('errors')}  "
                      f"(load {_loadavg()})", flush=True)
    finally:
        full.drop()
        empty.drop()
        shutil.rmtree(tmp, ignore_errors=True)  # the data directories (and their blobs, without --s3)
    med = {name: {key: statistics.median([r[key] for r in rs if r.get(key) is not None] or [0])
                  for key in ("rps", "p50_ms", "p99_ms", "server_cpu_us_per_request", "postgres_cpu_us_per_request",
                            "loader_cpu_us_per_request", "other_cpu_us_per_request", "machine_cpu_us_per_request",
                            "machine_busy_share", "server_cores_used")}
           for name, rs in runs.items()}
    full_ratio = med["full-1"]["rps"] / med["empty-1"]["rps"] if med["empty-1"]["rps"] else 0
    proc_ratio = med["full-2"]["rps"] / med["full-1"]["rps"] if med["full-1"]["rps"] else 0
    print("\nsummary (medians)")
    for name, m in med.items():
        print(f"  {name:8s} {m['rps']:8.1f} req/s  p50 {m['p50_ms']:.2f} ms  p99 {m['p99_ms']:.2f} ms  "
              f"server CPU {m['server_cpu_us_per_request']:.0f} µs/request")
    print(f"  full/empty (1 process) {full_ratio:.2f}  target >= 0.80: {'PASS' if full_ratio >= 0.8 else 'FAIL'}")
    print(f"  2 processes / 1 (full) {proc_ratio:.2f}  target >= 1.6: {'PASS' if proc_ratio >= 1.6 else 'below'}"
          f" (2 CPUs shared by the loader, PostgreSQL and the servers: where the CPU goes below)")
    cap = explain_cap(med, os.cpu_count() or 1)
    print("\n".join(cap))
    s = report["sizes"]
    print(f"  database: {s['bytes_per_patient']:.0f} B per patient (patients+accounts+consents), "
          f"{s['bytes_per_record']:.0f} B per record row, {s['bytes_per_audit_event']:.0f} B per audit event "
          f"(event + leaf, with indexes)")
    report.update(medians=med, full_over_empty=full_ratio, two_over_one=proc_ratio, runs=runs, cpu_cap=cap,
                  loadavg=list(os.getloadavg()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    print("RESULT_JSON: " + json.dumps({"full_over_empty": full_ratio, "two_over_one": proc_ratio,
                                        "medians": med, "sizes": s, "cpu_cap": cap}, default=str))
    failed = {f"{name} round {i + 1}": r.get("error_kinds") or "no read completed" for name, rs in runs.items()
              for i, r in enumerate(rs) if r.get("errors") or not r.get("rps")}
    if failed:  # a read that did not answer 200, or a round where none did, makes every figure above meaningless
        print(f"ERRORS: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
