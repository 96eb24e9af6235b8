"""Key operations of the vault: status, rotation (root under the two-person rule, patient KEKs), rewrap and
retirement. Key events raised inside other flows (failed unwraps) are audited by `vault.key_events`.

Owns: the wrapped-DEK columns of the data database (`DEK_COLUMNS`: every column holding a DEK wrapped by a patient
KEK must be listed here, or retirement could delete a KEK still in use; a test checks the models against it), the
rewrap job (resumable, idempotent, one data-database transaction per batch with its audit event), the root
rotation requests and their state machine (pending -> approved -> executing -> executed; pending -> expired; a
single-person development rotation the provider refused -> failed), and
the decision of what may be retired.
Never: decrypts or rewrites a data ciphertext (only `wrapped_dek` columns change), returns or logs key bytes, lets
the secadmin who requested a root rotation approve it, retires a root version a wrapped key names or a KEK version a
wrapped DEK names, or puts a patient id into the audit trail (events carry pseudonyms, counts and random ids).

Who may do what (consent/policy.csv, decided by the gate): secadmin `key.request`, `key.approve`, `key.status`;
auditor and auditadmin `key.status` only (they see status and rotation requests, and cannot change anything).
The CLI is the operator's tool on the host (it holds the root key's passphrase or PIN anyway); it records its own
audit events under the operator identity and follows the same two-person rule for the root in production.

Concurrency: rewrap uses compare-and-swap updates (`WHERE wrapped_dek = <the bytes it read>`), so readers keep
reading (the old wrap keeps opening until its KEK version is retired), writers keep writing (new DEKs are wrapped
under the newest KEK at once), and a second rewrap process, or one that resumed a crashed job, never clobbers a key.
A new rewrap run takes over an unfinished job (the previous runner stops at its next progress save).
Retirement waits `grace_seconds` after the newest version was created, so an upload that wrapped its DEK just before
a rotation and commits later never finds its KEK gone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from kms import CryptoError, KeyDestroyed, KeyStoreError
from kms.keystore import RewrapJob, RotationRequest
from kms.manager import RewrapBatch
from vault.access import audit_append, gate
from vault.db.models import Patient, PatientExport, Record
from vault.errors import Conflict, Forbidden, InvalidInput
from vault.identity import Identity, RequestContext

log = logging.getLogger("healthvault.keys")

# (name, table, id column, patient-id column, wrapped DEK column): every DEK wrapped by a patient KEK.
_P, _R, _E = Patient.__table__, Record.__table__, PatientExport.__table__
DEK_COLUMNS = (
    ("patients", _P, _P.c.id, _P.c.id, _P.c.wrapped_dek),
    ("records", _R, _R.c.id, _R.c.patient_id, _R.c.wrapped_dek),
    ("patient_exports", _E, _E.c.id, _E.c.patient_id, _E.c.wrapped_dek),  # issue 16: export packages
)
PHASES = ("keks", "service", *(name for name, *_ in DEK_COLUMNS))
REQUEST_TTL = dt.timedelta(hours=24)
DEFAULT_BATCH = 1000
DEFAULT_GRACE_SECONDS = 3600
SYSTEM = Identity(account_id="system:kms", role="system")
_SCAN_CHUNK = 5000


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes for timezone-aware columns: they were written in UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment


def _audit(session: Session, vault, *, identity: Identity, ctx: RequestContext, action: str, resource_type: str,
           outcome: str = "allow", resource_id: str | None = None, patient_id: str | None = None,
           reason: str | None = None) -> None:
    audit_append.append(session, vault, identity=identity, ctx=ctx, action=action, outcome=outcome,
                     resource_type=resource_type, resource_id=resource_id, patient_id=patient_id,
                     reason=reason[:128] if reason else None)


def audit_now(vault, **kwargs) -> None:
    """One audit event in its own transaction (key-store changes cannot share the data database's)."""
    with vault.session() as session:
        _audit(session, vault, **kwargs)
        session.commit()


# --- status --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RootVersionStatus:
    version: int
    current: bool
    patient_keks: int
    service_keys: int


@dataclasses.dataclass(frozen=True)
class KekVersionStatus:
    version: int
    keks: int  # patients whose KEK has this version
    deks: int  # wrapped DEKs in the data database naming this KEK version


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


@dataclasses.dataclass(frozen=True)
class KeyStatus:
    provider: str
    suite: int
    current_root_version: int
    root_versions: list[RootVersionStatus]
    kek_versions: list[KekVersionStatus]
    keks_under_old_root: int
    service_keys_under_old_root: int
    deks_under_old_kek: int
    deks_unreadable: int  # malformed wraps (integrity problem); erased patients' empty wraps are not counted
    pending_rotations: int
    rewrap_job: RewrapJobView | None


def _job_view(job: RewrapJob | None) -> RewrapJobView | None:
    if job is None:
        return None
    return RewrapJobView(job_id=job.id, status=job.status, phase=job.phase, total=job.total, scanned=job.scanned,
                         rewrapped=job.rewrapped, failed=job.failed, started_at=_utc(job.started_at),
                         updated_at=_utc(job.updated_at), finished_at=_utc(job.finished_at))


def _scan_dek_heads(vault):
    """Yield (table name, row id, patient id, kek_version | None) for every non-empty wrapped DEK; None = malformed.

    Reads only the first 6 bytes of each wrap (format, KEK version, suite), in id order, a chunk at a time."""
    for name, table, id_col, patient_col, wrapped_col in DEK_COLUMNS:
        head = func.substr(wrapped_col, 1, 6)
        after = None
        while True:
            query = (select(id_col, patient_col, head).where(func.length(wrapped_col) > 0)
                     .order_by(id_col).limit(_SCAN_CHUNK))
            if after is not None:
                query = query.where(id_col > after)
            with vault.session() as session:
                rows = session.execute(query).all()
            if not rows:
                break
            for row_id, patient_id, prefix in rows:
                version = None
                if prefix is not None and len(prefix) >= 5 and prefix[0] in (1, 2):
                    version = int.from_bytes(bytes(prefix[1:5]), "big")
                yield name, row_id, patient_id, version
            after = rows[-1][0]


def compute_status(vault) -> KeyStatus:
    """Versions and counts (no gate: callers check who may see it)."""
    keys, store = vault.keys, vault.keystore
    current = keys.current_root_version()
    root_counts = store.root_version_counts()
    versions = sorted(set(keys.root_versions()) | set(root_counts))
    root = [RootVersionStatus(v, v == current, root_counts.get(v, {}).get("patient_keks", 0),
                              root_counts.get(v, {}).get("service_keys", 0)) for v in versions]
    newest = store.all_newest_kek_versions()
    deks_by_version: dict[int, int] = {}
    stale = unreadable = 0
    for _name, _row_id, patient_id, version in _scan_dek_heads(vault):
        if version is None:
            unreadable += 1
            continue
        deks_by_version[version] = deks_by_version.get(version, 0) + 1
        top = newest.get(patient_id)
        if top and version != top:
            stale += 1
    kek_counts = store.kek_version_counts()
    kek = [KekVersionStatus(v, kek_counts.get(v, 0), deks_by_version.get(v, 0))
           for v in sorted(set(kek_counts) | set(deks_by_version))]
    pending = [r for r in store.rotation_requests(target="root", statuses=("pending", "approved", "executing"))
               if not _expired(r, vault.clock())]
    return KeyStatus(
        provider=keys.provider_name, suite=keys.suite, current_root_version=current, root_versions=root, kek_versions=kek,
        keks_under_old_root=sum(r.patient_keks for r in root if not r.current),
        service_keys_under_old_root=sum(r.service_keys for r in root if not r.current),
        deks_under_old_kek=stale, deks_unreadable=unreadable, pending_rotations=len(pending),
        rewrap_job=_job_view((store.rewrap_jobs(limit=1) or [None])[0]))


def status(session: Session, vault, *, identity: Identity, ctx: RequestContext) -> KeyStatus:
    """Key status for secadmin, auditor and auditadmin; the look is audited (`key.status`)."""
    gate.enter(vault, session, identity=identity, ctx=ctx, action="key.status", target=gate.Target("keys", None, None))
    session.commit()
    return compute_status(vault)


# --- root rotation: two-person rule ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RotationView:
    request_id: str
    target: str
    status: str
    requested_by: str
    requested_at: dt.datetime
    approved_by: str | None
    approved_at: dt.datetime | None
    executed_at: dt.datetime | None
    new_version: int | None


def _expired(row: RotationRequest, now: dt.datetime) -> bool:
    return row.status == "pending" and _utc(row.requested_at) + REQUEST_TTL <= now


def _view(row: RotationRequest, now: dt.datetime) -> RotationView:
    return RotationView(request_id=row.id, target=row.target, status="expired" if _expired(row, now) else row.status,
                        requested_by=row.requested_by, requested_at=_utc(row.requested_at),
                        approved_by=row.approved_by, approved_at=_utc(row.approved_at),
                        executed_at=_utc(row.executed_at), new_version=row.new_version)


def _rotation_target(request_id: str | None, exists: bool = True) -> gate.Target:
    return gate.Target("key-rotation", request_id, None, exists=exists)


def list_rotations(session: Session, vault, *, identity: Identity, ctx: RequestContext,
                   limit: int = 50) -> list[RotationView]:
    if not 1 <= limit <= 500:
        raise InvalidInput("limit must be between 1 and 500", extra={"reason": "limit"})
    gate.enter(vault, session, identity=identity, ctx=ctx, action="key.status", target=_rotation_target(None))
    session.commit()
    now = vault.clock()
    return [_view(r, now) for r in vault.keystore.rotation_requests(limit=limit)]


def get_rotation(session: Session, vault, *, identity: Identity, ctx: RequestContext, request_id: str) -> RotationView:
    row = vault.keystore.rotation_request(request_id) if _is_uuid(request_id) else None
    gate.enter(vault, session, identity=identity, ctx=ctx, action="key.status",
               target=_rotation_target(request_id if row else None, exists=row is not None))
    session.commit()
    return _view(row, vault.clock())


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, TypeError, AttributeError):
        return False


def request_root_rotation(session: Session, vault, *, identity: Identity, ctx: RequestContext) -> RotationView:
    """A secadmin asks for a new root version; it stays pending until a different secadmin approves (24 h)."""
    gate.enter(vault, session, identity=identity, ctx=ctx, action="key.request", target=_rotation_target(None),
               audit_allow=False)
    now = vault.clock()
    store = vault.keystore
    for row in store.rotation_requests(target="root", statuses=("pending", "approved", "executing")):
        if _expired(row, now):
            store.move_rotation_request(row.id, from_status="pending", status="expired")
            continue
        _audit(session, vault, identity=identity, ctx=ctx, action="key.request", outcome="deny",
               resource_type="key-rotation", resource_id=row.id, reason="already-open")
        session.commit()
        raise Conflict("A root rotation request is already open", extra={"request_id": row.id, "status": row.status})
    row = RotationRequest(id=str(uuid.uuid4()), target="root", status="pending",
                          requested_by=identity.account_id[:64], requested_at=now)
    store.add_rotation_request(row)
    _audit(session, vault, identity=identity, ctx=ctx, action="key.request", resource_type="key-rotation",
           resource_id=row.id, reason="root")
    session.commit()
    return _view(row, now)


def approve_root_rotation(session: Session, vault, *, identity: Identity, ctx: RequestContext,
                          request_id: str) -> RotationView:
    """A second, different secadmin approves; the rotation then runs at once (GB/T 39786 §8.6 b)."""
    store = vault.keystore
    row = store.rotation_request(request_id) if _is_uuid(request_id) else None
    target = _rotation_target(request_id if row else None, exists=row is not None)
    gate.enter(vault, session, identity=identity, ctx=ctx, action="key.approve", target=target, deny_as=Forbidden,
               audit_allow=False)
    now = vault.clock()
    if row.requested_by == identity.account_id[:64]:
        _audit(session, vault, identity=identity, ctx=ctx, action="key.approve", outcome="deny",
               resource_type="key-rotation", resource_id=row.id, reason="two-person-rule")
        session.commit()
        raise Forbidden("A root-key rotation must be approved by a different security administrator than the one "
                        "who requested it (two-person rule, GB/T 39786 §8.6)", extra={"reason": "two-person-rule"})
    if _expired(row, now):
        store.move_rotation_request(row.id, from_status="pending", status="expired")
        row = store.rotation_request(row.id)
    if row.status != "pending" or not store.move_rotation_request(
            row.id, from_status="pending", status="approved", approved_by=identity.account_id[:64], approved_at=now):
        current = store.rotation_request(row.id)
        _audit(session, vault, identity=identity, ctx=ctx, action="key.approve", outcome="deny",
               resource_type="key-rotation", resource_id=row.id, reason=f"status:{current.status}")
        session.commit()
        raise Conflict("This rotation request is not pending", extra={"status": current.status})
    _audit(session, vault, identity=identity, ctx=ctx, action="key.approve", resource_type="key-rotation",
           resource_id=row.id, reason="two-person-rule")
    session.commit()
    return _execute(session, vault, request_id=row.id, identity=identity, ctx=ctx)


def _execute(session: Session, vault, *, request_id: str, identity: Identity, ctx: RequestContext,
             from_status: str = "approved") -> RotationView:
    store = vault.keystore
    if not store.move_rotation_request(request_id, from_status=from_status, status="executing"):
        return _view(store.rotation_request(request_id), vault.clock())  # someone else runs it
    try:
        version = vault.keys.rotate_root()
    except KeyStoreError as exc:
        store.move_rotation_request(request_id, from_status="executing", status="approved")
        _audit(session, vault, identity=identity, ctx=ctx, action="key.rotate", outcome="error",
               resource_type="root-key", resource_id=request_id, reason="provider-refused")
        session.commit()
        log.warning("approved root rotation %s could not run here: %s", request_id, exc)
        return _view(store.rotation_request(request_id), vault.clock())
    now = vault.clock()
    store.move_rotation_request(request_id, from_status="executing", status="executed", executed_at=now,
                                new_version=version)
    _audit(session, vault, identity=identity, ctx=ctx, action="key.rotate", resource_type="root-key",
           resource_id=str(version), reason=f"request:{request_id}")
    session.commit()
    return _view(store.rotation_request(request_id), now)


class TwoPersonRuleRefused(Exception):
    """The CLI was asked to rotate the root in production without an approved request."""


def rotate_root_cli(vault, *, identity: Identity, ctx: RequestContext, profile: str | None = None) -> RotationView:
    """`keys rotate --root`: run an approved request if there is one; otherwise production refuses and
    development rotates single-handed (recorded and audited as such)."""
    store = vault.keystore
    now = vault.clock()
    profile = profile or vault.settings.profile
    stuck = now - dt.timedelta(minutes=5)
    open_rows = store.rotation_requests(target="root", statuses=("approved", "executing"))
    for row in open_rows:
        from_status = row.status
        if from_status == "executing" and _utc(row.approved_at or row.requested_at) > stuck:
            continue  # another process is running it right now
        with vault.session() as session:
            view = _execute(session, vault, request_id=row.id, identity=identity, ctx=ctx, from_status=from_status)
        if view.status == "executed":
            return view
    if profile == "production":
        pending = [r for r in store.rotation_requests(target="root", statuses=("pending",)) if not _expired(r, now)]
        audit_now(vault, identity=identity, ctx=ctx, action="key.rotate", outcome="deny", resource_type="root-key",
                   reason="two-person-rule")
        hint = (f"request {pending[0].id} is waiting for a second secadmin's approval"
                if pending else "no approved request exists")
        raise TwoPersonRuleRefused(
            "refusing to rotate the root key: in the production profile a root rotation needs two security "
            "administrators (GB/T 39786 §8.6): one requests it (POST /v1/keys/rotations), a different one approves "
            f"it (POST /v1/keys/rotations/<id>/approve); {hint}.")
    row = RotationRequest(id=str(uuid.uuid4()), target="root", status="executing",
                          requested_by=identity.account_id[:64], requested_at=now)
    store.add_rotation_request(row)
    try:
        version = vault.keys.rotate_root()
    except KeyStoreError:
        store.move_rotation_request(row.id, from_status="executing", status="failed")
        audit_now(vault, identity=identity, ctx=ctx, action="key.rotate", outcome="error", resource_type="root-key",
                   resource_id=row.id, reason="provider-refused")
        raise
    store.move_rotation_request(row.id, from_status="executing", status="executed", executed_at=vault.clock(),
                                new_version=version)
    audit_now(vault, identity=identity, ctx=ctx, action="key.rotate", resource_type="root-key",
               resource_id=str(version), reason=f"single-person ({profile} profile):{row.id}")
    return _view(store.rotation_request(row.id), vault.clock())


# --- KEK rotation --------------------------------------------------------------------------------------------------------
def rotate_kek(vault, *, patient_id: str, identity: Identity, ctx: RequestContext) -> int:
    """A new KEK version for one patient; new DEKs use it at once, old DEKs move on the next rewrap."""
    try:
        version = vault.keys.rotate_patient_key(patient_id)
    except KeyDestroyed:
        raise KeyStoreError("this patient was erased: there is no key to rotate") from None
    audit_now(vault, identity=identity, ctx=ctx, action="key.rotate", resource_type="patient-kek",
               resource_id=str(version), patient_id=patient_id, reason="kek")
    return version


def rotate_all_keks(vault, *, identity: Identity, ctx: RequestContext, batch_size: int = DEFAULT_BATCH,
                    progress: Callable[[int], None] | None = None) -> int:
    """A new KEK version for every patient that has keys; one key-store transaction and one audit event per batch."""
    after, total = None, 0
    while True:
        ids = vault.keystore.live_patient_ids(after=after, limit=batch_size)
        if not ids:
            return total
        done = vault.keys.rotate_patient_keys(ids)
        total += len(done)
        audit_now(vault, identity=identity, ctx=ctx, action="key.rotate", resource_type="patient-kek",
                   reason=f"all-keks batch:{len(done)}")
        after = ids[-1]
        if progress is not None:
            progress(len(ids))


# --- rewrap --------------------------------------------------------------------------------------------------------------
class RewrapTakenOver(Exception):
    """Another process took this rewrap job over; this one stops."""


def _estimate(vault) -> int:
    """Keys a rewrap will look at: KEKs and service keys under old roots, plus every wrapped DEK (they are scanned)."""
    keys, store = vault.keys, vault.keystore
    current = keys.current_root_version()
    counts = store.root_version_counts()
    old = sum(c["patient_keks"] + c["service_keys"] for v, c in counts.items() if v != current)
    with vault.session() as session:
        deks = sum(session.scalar(select(func.count()).select_from(table).where(func.length(col) > 0)) or 0
                   for _name, table, _id, _pid, col in DEK_COLUMNS)
    return old + deks


def _rewrap_dek_batch(vault, *, spec, after: str | None, limit: int, job_id: str, identity: Identity,
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
            _audit(session, vault, identity=identity, ctx=ctx, action="key.unwrap_failed", outcome="error",
                   resource_type=name[:-1] if name.endswith("s") else name, resource_id=str(row_id),
                   patient_id=patient_id, reason="rewrap")
        _audit(session, vault, identity=identity, ctx=ctx, action="key.rewrap", resource_type=f"{name}-dek",
               resource_id=job_id,
               reason=f"batch scanned={batch.scanned} rewrapped={batch.rewrapped} failed={batch.failed}")
        session.commit()  # the batch and its audit event, or neither
    return batch


def rewrap(vault, *, identity: Identity, ctx: RequestContext, batch_size: int = DEFAULT_BATCH,
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
    state = {"phase": job.phase, "cursor": job.cursor, "scanned": job.scanned, "rewrapped": job.rewrapped,
             "failed": job.failed, "total": max(job.total, job.scanned)}

    def save(**values) -> None:
        state.update(values)
        if state["scanned"] > state["total"]:
            state["total"] = state["scanned"]
        if not store.save_rewrap_job(job.id, runner, updated_at=vault.clock(), **state):
            raise RewrapTakenOver()
        if progress is not None:
            progress(RewrapJobView(job_id=job.id, status=state.get("status", "running"), phase=state["phase"],
                                   total=state["total"], scanned=state["scanned"], rewrapped=state["rewrapped"],
                                   failed=state["failed"], started_at=_utc(job.started_at),
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
                        _audit(session, vault, identity=identity, ctx=ctx, action="key.unwrap_failed",
                               outcome="error", resource_type="patient-kek", patient_id=patient_id, reason="rewrap")
                    _audit(session, vault, identity=identity, ctx=ctx, action="key.rewrap",
                           resource_type="patient-kek", resource_id=job.id,
                           reason=f"batch scanned={batch.scanned} rewrapped={batch.rewrapped} failed={batch.failed}")
                    session.commit()
                account(batch, json.dumps(list(batch.last)))
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
    return _job_view(next(j for j in store.rewrap_jobs(limit=20) if j.id == job.id))


# --- retirement --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RetireResult:
    root_versions: list[int] = dataclasses.field(default_factory=list)
    kek_versions: int = 0
    refused: list[str] = dataclasses.field(default_factory=list)  # human-readable, no identifiers


def _referenced_kek_versions(vault) -> set[tuple[str, int]]:
    referenced: set[tuple[str, int]] = set()
    for _name, _row_id, patient_id, version in _scan_dek_heads(vault):
        if version is not None:
            referenced.add((patient_id, version))
    return referenced


def retire(vault, *, identity: Identity, ctx: RequestContext, grace_seconds: int = DEFAULT_GRACE_SECONDS,
           batch_size: int = DEFAULT_BATCH) -> RetireResult:
    """Retire every old version nothing references: KEK versions no wrapped DEK names (and that are not a patient's
    newest), then root versions no KEK or service key is wrapped by (never the current one)."""
    store, keys = vault.keystore, vault.keys
    # KEK rows carry the key manager's clock, rotation requests the vault's; the same wall clock in a deployment.
    now = max(vault.clock(), keys.utcnow())
    grace = dt.timedelta(seconds=max(0, grace_seconds))
    result = RetireResult()
    referenced = _referenced_kek_versions(vault)
    after = None
    young = in_use = 0
    while True:
        rows = store.old_kek_rows(after=after, limit=batch_size)
        if not rows:
            break
        after = (rows[-1][0], rows[-1][1])
        doomed = []
        for patient_id, version, newest_created in rows:
            if (patient_id, version) in referenced:
                in_use += 1
            elif _utc(newest_created) + grace > now:
                young += 1
            else:
                doomed.append((patient_id, version))
        if doomed:
            deleted = keys.retire_patient_keks(doomed)
            result.kek_versions += deleted
            audit_now(vault, identity=identity, ctx=ctx, action="key.retire", resource_type="patient-kek",
                       reason=f"batch retired={deleted}")
    if in_use:
        result.refused.append(f"{in_use} old KEK version(s) still wrap DEKs: run `healthvault keys rewrap` first")
    if young:
        result.refused.append(f"{young} old KEK version(s) wait for the {grace_seconds} s grace period after rotation")
    current = keys.current_root_version()
    counts = store.root_version_counts()
    last_rotation = next((r for r in store.rotation_requests(target="root", statuses=("executed",))
                          if r.new_version == current), None)
    for version in keys.root_versions():
        if version == current:
            continue
        used = counts.get(version)
        if used and (used["patient_keks"] or used["service_keys"]):
            result.refused.append(f"root version {version} still wraps {used['patient_keks']} KEK(s) and "
                                  f"{used['service_keys']} service key(s): run `healthvault keys rewrap` first")
            continue
        if last_rotation is not None and _utc(last_rotation.executed_at) + grace > now:
            result.refused.append(f"root version {version} waits for the {grace_seconds} s grace period")
            continue
        try:
            keys.retire_root_version(version)
        except KeyStoreError as exc:
            result.refused.append(str(exc))
            continue
        result.root_versions.append(version)
        audit_now(vault, identity=identity, ctx=ctx, action="key.retire", resource_type="root-key",
                   resource_id=str(version), reason="unreferenced")
    return result
