"""The rewrap job: move every wrapped key to the newest version (KEKs and service keys to the current root, DEKs to
their patient's newest KEK), resumable and idempotent.

Owns the rewrap job's phases and progress (one data-database transaction per DEK batch with its audit event; the
job's cursor saved after every batch in the key store) and its view (`RewrapJobView`).
Never: decrypts or rewrites a data ciphertext (only `wrapped_dek` columns change), returns or logs key bytes, or puts
a patient id into the audit trail (events carry pseudonyms, counts and random ids).

Concurrency: rewrap uses compare-and-swap updates (`WHERE wrapped_dek = <the bytes it read>`), so readers keep
reading (the old wrap keeps opening until its KEK version is retired), writers keep writing (new DEKs are wrapped
under the newest KEK at once), and a second rewrap process, or one that resumed a crashed job, never clobbers a key.
A new rewrap run takes over an unfinished job (the previous runner stops at its next progress save).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast, overload

from sqlalchemy import bindparam, func, select, update

from kms import CryptoError, KeyDestroyed
from kms.keystore_tables import RewrapJob
from kms.rewrap import RewrapBatch
from vault.errors import InvalidInput
from vault.identity import Identity, RequestContext
from vault.keys.common import DEFAULT_BATCH, DEK_COLUMNS, audit, audit_now, utc

if TYPE_CHECKING:
    from vault.runtime import Vault

PHASES = ("keks", "service", *(name for name, *_ in DEK_COLUMNS))


@dataclasses.dataclass(frozen=True)
class RewrapJobView:
    job_id: str
    status: str
    phase: str
    total: int
    scanned: int
    rewrapped: int
    failed: int
    started_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None


@overload
def job_view(job: RewrapJob) -> RewrapJobView: ...
@overload
def job_view(job: None) -> None: ...
def job_view(job: RewrapJob | None) -> RewrapJobView | None:
    if job is None:
        return None
    return RewrapJobView(job_id=job.id, status=job.status, phase=job.phase, total=job.total, scanned=job.scanned,
                         rewrapped=job.rewrapped, failed=job.failed, started_at=utc(job.started_at),
                         updated_at=utc(job.updated_at), finished_at=utc(job.finished_at))


class RewrapTakenOver(Exception):
    """Another process took this rewrap job over; this one stops."""


def _estimate(vault: Vault) -> int:
    """Keys a rewrap will look at: KEKs and service keys under old roots, plus every wrapped DEK (they are scanned)."""
    keys, store = vault.keys, vault.keystore
    current = keys.current_root_version()
    counts = store.root_version_counts()
    old = sum(c["patient_keks"] + c["service_keys"] for v, c in counts.items() if v != current)
    with vault.session() as session:
        deks = sum(session.scalar(select(func.count()).select_from(table).where(func.length(col) > 0)) or 0
                   for _name, table, _id, _pid, col in DEK_COLUMNS)
    return old + deks


def _rewrap_dek_batch(vault: Vault, *, spec, after: str | None, limit: int, job_id: str, identity: Identity,
                      ctx: RequestContext) -> RewrapBatch:
    name, table, id_col, patient_col, wrapped_col = spec
    query = select(id_col, patient_col, wrapped_col).where(func.length(wrapped_col) > 0).order_by(id_col).limit(limit)
    if after is not None:
        query = query.where(id_col > after)
    batch = RewrapBatch()
    with vault.session() as session:
        rows = session.execute(query).all()
        if not rows:
            return batch
        batch.scanned, batch.last = len(rows), rows[-1][0]
        changes = []
        with vault.keys.dek_rewrapper() as rewrapper:
            rewrapper.load(pid for _, pid, _ in rows)
            for row_id, patient_id, blob in rows:
                try:
                    new = rewrapper.rewrap(patient_id, blob)
                except KeyDestroyed:
                    continue  # erased patient: nothing can (or should) be moved
                except CryptoError:
                    batch.failed += 1
                    batch.failures.append((row_id, patient_id))
                    continue
                if new is not None:
                    changes.append({"b_id": row_id, "b_old": bytes(blob), "b_new": new})
        if changes:
            statement = (update(table).where(id_col == bindparam("b_id"), wrapped_col == bindparam("b_old"))
                         .values({wrapped_col.name: bindparam("b_new")}))
            result = session.connection().execute(statement, changes)
            batch.rewrapped = result.rowcount if result.rowcount is not None and result.rowcount >= 0 else len(changes)
        for row_id, patient_id in batch.failures:
            audit(session, vault, identity=identity, ctx=ctx, action="key.unwrap_failed", outcome="error",
                  resource_type=name[:-1] if name.endswith("s") else name, resource_id=str(row_id),
                  patient_id=patient_id, reason="rewrap")
        audit(session, vault, identity=identity, ctx=ctx, action="key.rewrap", resource_type=f"{name}-dek",
              resource_id=job_id,
              reason=f"batch scanned={batch.scanned} rewrapped={batch.rewrapped} failed={batch.failed}")
        session.commit()  # the batch and its audit event, or neither
    return batch


def rewrap(vault: Vault, *, identity: Identity, ctx: RequestContext, batch_size: int = DEFAULT_BATCH,
           progress: Callable[[RewrapJobView], None] | None = None, pause_seconds: float = 0.0) -> RewrapJobView:
    """Move every wrapped key to the newest version: KEKs and service keys to the current root, DEKs to their
    patient's newest KEK. Resumes an unfinished job (after a crash or kill) where its cursor stopped."""
    if not 1 <= batch_size <= 50_000:
        raise InvalidInput("batch size must be between 1 and 50000", extra={"reason": "batch-size"})
    store, keys = vault.keystore, vault.keys
    runner = secrets.token_hex(8)
    now = vault.clock()
    job = store.unfinished_rewrap_job()
    if job is None:
        job = RewrapJob(id=str(uuid.uuid4()), status="running", phase=PHASES[0], cursor=None, runner=runner,
                        started_at=now, updated_at=now, finished_at=None, total=_estimate(vault), scanned=0,
                        rewrapped=0, failed=0)
        store.add_rewrap_job(job)
        how = "started"
    else:
        if not store.take_over_rewrap_job(job.id, runner, now=now):
            raise RewrapTakenOver()
        job.runner = runner
        how = "resumed"
    audit_now(vault, identity=identity, ctx=ctx, action="key.rewrap", resource_type="rewrap-job", resource_id=job.id,
              reason=f"{how} phase={job.phase} root={keys.current_root_version()}")
    state: dict[str, Any] = {"phase": job.phase, "cursor": job.cursor, "scanned": job.scanned,
                             "rewrapped": job.rewrapped, "failed": job.failed, "total": max(job.total, job.scanned)}

    def save(**values) -> None:
        state.update(values)
        if state["scanned"] > state["total"]:
            state["total"] = state["scanned"]
        if not store.save_rewrap_job(job.id, runner, updated_at=vault.clock(), **state):
            raise RewrapTakenOver()
        if progress is not None:
            progress(RewrapJobView(job_id=job.id, status=state.get("status", "running"), phase=state["phase"],
                                   total=state["total"], scanned=state["scanned"], rewrapped=state["rewrapped"],
                                   failed=state["failed"], started_at=utc(job.started_at),
                                   updated_at=vault.clock(), finished_at=state.get("finished_at")))

    def account(batch: RewrapBatch, cursor) -> None:
        save(cursor=cursor, scanned=state["scanned"] + batch.scanned,
             rewrapped=state["rewrapped"] + batch.rewrapped, failed=state["failed"] + batch.failed)
        if pause_seconds:
            time.sleep(pause_seconds)

    for phase in PHASES[PHASES.index(state["phase"]):]:
        if state["phase"] != phase:
            save(phase=phase, cursor=None)
        if phase == "keks":
            while True:
                after = tuple(json.loads(state["cursor"])) if state["cursor"] else None
                batch = keys.rewrap_kek_batch(after=after, limit=batch_size)
                if not batch.scanned:
                    break
                with vault.session() as session:
                    for patient_id in batch.failures:
                        audit(session, vault, identity=identity, ctx=ctx, action="key.unwrap_failed",
                              outcome="error", resource_type="patient-kek", patient_id=patient_id, reason="rewrap")
                    audit(session, vault, identity=identity, ctx=ctx, action="key.rewrap",
                          resource_type="patient-kek", resource_id=job.id,
                          reason=f"batch scanned={batch.scanned} rewrapped={batch.rewrapped} failed={batch.failed}")
                    session.commit()
                account(batch, json.dumps(list(cast("Iterable[object]", batch.last))))
        elif phase == "service":
            batch = keys.rewrap_service_keys()
            if batch.scanned:
                audit_now(vault, identity=identity, ctx=ctx, action="key.rewrap", resource_type="service-key",
                          resource_id=job.id, outcome="allow" if not batch.failed else "error",
                          reason=f"batch scanned={batch.scanned} rewrapped={batch.rewrapped} failed={batch.failed}")
            account(batch, "done")
        else:
            spec = next(s for s in DEK_COLUMNS if s[0] == phase)
            while True:
                batch = _rewrap_dek_batch(vault, spec=spec, after=state["cursor"], limit=batch_size, job_id=job.id,
                                          identity=identity, ctx=ctx)
                if not batch.scanned:
                    break
                account(batch, str(batch.last))
    finished = vault.clock()
    save(phase="done", cursor=None, status="done", finished_at=finished, total=state["scanned"])
    audit_now(vault, identity=identity, ctx=ctx, action="key.rewrap", resource_type="rewrap-job", resource_id=job.id,
              outcome="allow" if not state["failed"] else "error",
              reason=f"done scanned={state['scanned']} rewrapped={state['rewrapped']} failed={state['failed']}")
    return job_view(next(j for j in store.rewrap_jobs(limit=20) if j.id == job.id))

