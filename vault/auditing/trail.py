"""The vault's audit-trail services: checkpoints, search, the patient's access log and exports.

Owns who may read the trail (through the gate: auditor and auditadmin only; a patient only the events about their
own data) and running the long jobs (exports) with progress. Reading the trail is itself audited. Nothing here
writes or changes events except by appending through `vault.audit_log`.

Suites: the checkpoint signer is Ed25519 ("aes") or SM2 ("sm", kms.sm2), and its key type fixes the tree hash and the
export's file hashes (SHA-256 or SM3, audit.verify). An export carries only checkpoints by the current signer (a fresh
one is signed when the newest is by another key, e.g. after a suite switch), so one pinned key verifies it; the
events in it may be of both formats. Older checkpoints by the previous key stay in the database and in older exports,
and their roots can be recomputed from any newer export's leaves.bin (docs/sm-suite.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, and_, delete, func, select, tuple_
from sqlalchemy.orm import Session

from audit import bundle, log, retention, trail
from audit.models import ArchivePermit, AuditEvent, Checkpoint, Leaf
from audit.verify import HASHES, claims_signer, leaf_data, verify_bundle
from kms import suites
from vault import fields, text
from vault.access import audit_append, gate
from vault.db.models import Account
from vault.errors import IntegrityFailure, InvalidInput, NotFound
from vault.identity import Identity, RequestContext

if TYPE_CHECKING:
    from vault.runtime import Vault

MAX_PAGE = 500
_MAX_EVENT_ID = 2**63 - 1
PATIENT_VISIBLE_ACTIONS = ("patient.read", "record.create", "record.read", "record.list", "record.download",
                           "record.delete", "grant.create", "grant.revoke", "breakglass")


def signer(vault: Vault):
    """The checkpoint and export signer of the configured suite: Ed25519 from the `audit-signing` key, or SM2 from
    the `sm:audit-signing` key."""
    suite = fields.suite_of(vault)
    seed = vault.keys.service_key(suites.purpose(log.SIGNING_PURPOSE, suite))
    return log.signer_from_key(vault.settings.audit_origin, seed, sm2=suite == suites.SM4_GCM)


def checkpoint_now(vault: Vault, *, force: bool = False, by=None) -> Checkpoint | None:
    """Integrate pending events and sign a checkpoint (None when nothing was new)."""
    with vault.session() as session:
        try:
            made = log.integrate(session, cache=vault.log_cache, signer=by or signer(vault),
                                 origin=vault.settings.audit_origin, now=vault.clock(), force=force)
            session.commit()
        except BaseException:
            session.rollback()
            vault.log_cache.reset()
            raise
        return made


def checkpoint_due(vault: Vault) -> bool:
    """Every N pending events, or T seconds after the last checkpoint when anything is pending."""
    with vault.session() as session:
        pending = log.pending_events(session)
        if pending == 0:
            return False
        if pending >= vault.settings.audit_checkpoint_every_events:
            return True
        latest = log.latest_checkpoint(session)
    if latest is None:
        return True
    age = (vault.clock() - latest.created_at).total_seconds()
    return age >= vault.settings.audit_checkpoint_every_seconds


class Checkpointer(threading.Thread):
    """Background thread of the server process that signs checkpoints on schedule."""

    def __init__(self, vault: Vault, *, poll_seconds: float = 1.0) -> None:
        from vault.db.leader import CHECKPOINTER, LeaderLock

        super().__init__(name="audit-checkpointer", daemon=True)
        self.vault = vault
        self.poll_seconds = poll_seconds
        self.stopped = threading.Event()
        # Several server processes (issue 17): only the holder of this lock signs; another takes over if it dies.
        self.leader = LeaderLock(vault.engine, CHECKPOINTER, duty="audit checkpointer")

    def run(self) -> None:
        while not self.stopped.wait(self.poll_seconds):
            try:
                if self.leader.held() and checkpoint_due(self.vault):
                    checkpoint_now(self.vault)
            except Exception:
                import logging

                logging.getLogger("healthvault.audit").exception("checkpoint failed")

    def stop(self) -> None:
        self.stopped.set()
        self.leader.release()


@dataclasses.dataclass(frozen=True)
class PublicKey:
    """The verifier key (C2SP vkey) that signs checkpoints and exports, for out-of-band hand-over to an assessor."""

    vkey: str
    signature: str  # "ed25519" | "sm2-sm3"
    origin: str


def public_key(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext) -> PublicKey:
    """The current signer's verifier key, to auditors (audit.read through the gate, audited like any read)."""
    gate.enter(vault, session, identity=identity, ctx=ctx, action="audit.read",
               target=gate.Target("audit-public-key", None, None))
    session.commit()
    return public_key_of(vault)


def public_key_of(vault: Vault) -> PublicKey:
    """The verifier key without the gate: for the operator's CLI on the host (it audits its own use)."""
    key = signer(vault).verifier_key()
    return PublicKey(vkey=str(key), signature=key.algorithms["signature"], origin=vault.settings.audit_origin)


@dataclasses.dataclass(frozen=True)
class Filters:
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    actor: str | None = None
    patient: str | None = None
    action: str | None = None
    outcome: str | None = None


def _page(session: Session, query, *, limit: int, cursor: str | None) -> tuple[list[AuditEvent], str | None]:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}", extra={"reason": "limit"})
    if cursor:
        # ASCII digits only (str.isdigit also takes '²' and other scripts' digits), within a BIGINT.
        if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 20 or int(cursor) > _MAX_EVENT_ID:
            raise InvalidInput("Invalid cursor", extra={"reason": "cursor"})
        query = query.where(AuditEvent.id < int(cursor))
    rows = list(session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit + 1)))
    page = rows[:limit]
    return page, (str(page[-1].id) if len(rows) > limit else None)


def search(session: Session, vault: Vault,
           *, identity: Identity, ctx: RequestContext, filters: Filters, limit: int = 100,
           cursor: str | None = None) -> tuple[list[AuditEvent], str | None]:
    """Compliance search, newest first; the search itself is audited as audit.read."""
    filters = dataclasses.replace(filters, since=text.checked_instant(filters.since, field="since"),
                                  until=text.checked_instant(filters.until, field="until"))
    gate.enter(vault, session, identity=identity, ctx=ctx, action="audit.read",
               target=gate.Target("audit", None, None))
    session.commit()
    query = select(AuditEvent)
    for column, value in ((AuditEvent.actor, filters.actor), (AuditEvent.patient_pseudonym, filters.patient),
                          (AuditEvent.action, filters.action), (AuditEvent.outcome, filters.outcome)):
        if value is not None:
            query = query.where(column == value)
    if filters.since is not None:
        query = query.where(AuditEvent.occurred_at >= filters.since)
    if filters.until is not None:
        query = query.where(AuditEvent.occurred_at < filters.until)
    return _page(session, query, limit=limit, cursor=cursor)


@dataclasses.dataclass(frozen=True)
class AccessEntry:
    event_id: int
    occurred_at: dt.datetime
    action: str
    outcome: str
    actor_role: str
    actor_name: str
    resource_type: str
    resource_id: str | None
    grant_id: str | None
    reason: str | None


def access_log(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, limit: int = 100,
               cursor: str | None = None) -> tuple[list[AccessEntry], str | None]:
    """Every access to the caller's own data, who made it (role and name) and under what."""
    patient_id = identity.patient_id
    target = gate.Target("patient", patient_id, patient_id, exists=patient_id is not None)
    gate.enter(vault, session, identity=identity, ctx=ctx, action="access_log.read", target=target)
    assert patient_id is not None  # the gate refused (404) a caller who is no patient
    session.commit()
    mine = audit_append.patient_pseudonyms(vault, patient_id)  # every suite's form: events from before a switch too
    query = select(AuditEvent).where(and_(AuditEvent.patient_pseudonym.in_(mine),
                                          AuditEvent.action.in_(PATIENT_VISIBLE_ACTIONS)))
    rows, next_cursor = _page(session, query, limit=limit, cursor=cursor)
    me = set(audit_append.actor_pseudonyms(vault, identity.account_id))
    staff = {p: a.username for a in session.scalars(select(Account).where(Account.role != "patient"))
             for p in audit_append.actor_pseudonyms(vault, a.id)} if rows else {}
    entries = [AccessEntry(
        event_id=r.id, occurred_at=r.occurred_at, action=r.action, outcome=r.outcome, actor_role=r.actor_role,
        actor_name="you" if r.actor in me else staff.get(r.actor, "another account"),
        resource_type=r.resource_type, resource_id=r.resource_id, grant_id=r.grant_id, reason=r.reason)
        for r in rows]
    return entries, next_cursor


# ---- exports -------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ExportJob:
    export_id: str
    since: dt.datetime | None
    until: dt.datetime | None
    status: str = "queued"  # queued | running | done | failed
    done: int = 0
    total: int = 0
    event_count: int = 0
    error: str | None = None
    path: Path | None = None


def export_dir(vault: Vault, export_id: str) -> Path:
    if not export_id.isalnum():
        raise NotFound()
    return vault.settings.data_dir / "exports" / export_id


def write_export(vault: Vault, *, since: dt.datetime | None, until: dt.datetime | None, out: Path,
                 progress: Callable[[int, int], None] | None = None,
                 leaf_range: tuple[int, int] | None = None) -> dict:
    """Checkpoint, then write the verifiable bundle of the events in [since, until) to `out`.

    The events are the contiguous run of leaves from the first to the last event in the range (events of other
    times that the log interleaved between them come along, so the run stays provable); archived leaves are never
    included. `leaf_range` selects leaves directly (the archiver). Only checkpoints by the current signer are
    exported (see the module docstring)."""
    by = signer(vault)
    vkey = by.verifier_key()
    checkpoint_now(vault, force=False, by=by)
    with vault.session() as session:
        latest = log.latest_checkpoint(session)
        if latest is None or not claims_signer(latest.note, vkey):
            latest = checkpoint_now(vault, force=True, by=by)
            assert latest is not None  # a forced checkpoint is always signed
        size = latest.tree_size
        floor = pruned_below(session)
        if leaf_range is not None:
            first, last = leaf_range[0], leaf_range[1] - 1
        else:
            in_range = select(Leaf.leaf_index).join(
                AuditEvent, and_(AuditEvent.chain_id == Leaf.chain_id, AuditEvent.seq == Leaf.seq)
            ).where(Leaf.leaf_index >= floor, Leaf.leaf_index < size)
            if since is not None:
                in_range = in_range.where(AuditEvent.occurred_at >= since)
            if until is not None:
                in_range = in_range.where(AuditEvent.occurred_at < until)
            indices = list(session.scalars(in_range))
            first, last = (min(indices), max(indices)) if indices else (size, size - 1)
        total = max(0, last - first + 1)
        events = []
        rows = session.execute(
            select(Leaf.leaf_index, AuditEvent).join(
                AuditEvent, and_(AuditEvent.chain_id == Leaf.chain_id, AuditEvent.seq == Leaf.seq))
            .where(Leaf.leaf_index >= first, Leaf.leaf_index <= last).order_by(Leaf.leaf_index))
        for n, (_index, row) in enumerate(rows, start=1):
            events.append({**trail.canonical_event(row), "hash": row.hash})
            if progress and n % 1000 == 0:
                progress(n, total)
        all_leaves = [leaf_data(c, s, bytes(h)) for c, s, h in session.execute(
            select(Leaf.chain_id, Leaf.seq, Leaf.event_hash).where(Leaf.leaf_index < size)
            .order_by(Leaf.leaf_index))]
        covering = next((c for c in session.scalars(
            select(Checkpoint).where(Checkpoint.tree_size >= last + 1, Checkpoint.tree_size <= size)
            .order_by(Checkpoint.tree_size, Checkpoint.id)) if claims_signer(c.note, vkey)), None)
        notes = [c.note for c in (covering, latest) if c is not None]
        notes = list(dict.fromkeys(notes))
    bundle.write_bundle(out, origin=vault.settings.audit_origin, events=events, first_leaf=first,
                        all_leaf_data=all_leaves, checkpoints=notes, signer=by,
                        since=since.isoformat() if since else None, until=until.isoformat() if until else None,
                        created_at=vault.clock().isoformat())
    if progress:
        progress(total, total)
    return {"event_count": len(events), "tree_size": size, "first_leaf": first}


EXPORT_JOB = "audit.export"


def _run_export(vault: Vault, job: ExportJob) -> None:
    def progress(done: int, total: int) -> None:
        job.done, job.total = done, total

    job.status = "running"
    assert job.path is not None  # set by start_export before the thread starts
    try:
        result = write_export(vault, since=job.since, until=job.until, out=job.path, progress=progress)
        job.event_count = result["event_count"]
        job.status = "done"
    except Exception as exc:  # noqa: BLE001 - reported through the job
        job.status, job.error = "failed", type(exc).__name__


def start_export(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, since, until) -> ExportJob:
    """Audited (audit.export) before the job starts."""
    since, until = text.checked_instant(since, field="since"), text.checked_instant(until, field="until")
    if since is not None and until is not None and since >= until:
        raise InvalidInput("since must be before until", extra={"reason": "range"})
    gate.enter(vault, session, identity=identity, ctx=ctx, action="audit.export",
               target=gate.Target("audit", None, None))
    session.commit()
    job = ExportJob(export_id=secrets.token_hex(8), since=since, until=until)
    job.path = export_dir(vault, job.export_id)
    vault.jobs.track(EXPORT_JOB, job.export_id, job)
    threading.Thread(target=_run_export, args=(vault, job), name=f"export-{job.export_id}", daemon=True).start()
    return job


def get_export(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, export_id: str) -> ExportJob:
    gate.enter(vault, session, identity=identity, ctx=ctx, action="audit.read",
               target=gate.Target("audit-export", export_id, None))
    session.commit()
    job = vault.jobs.tracked(EXPORT_JOB, export_id)
    if job is None:
        raise NotFound()
    return job


# ---- retention: archive and prune ------------------------------------------------------------------------------------

def pruned_below(session: Session) -> int:
    """Leaves below this index may have had their event bodies archived and pruned."""
    return int(session.scalar(select(func.max(ArchivePermit.below_leaf))) or 0)


def archive(vault: Vault, *, out: Path, now: dt.datetime | None = None) -> dict:
    """Seal the oldest removable events into a verified export at `out`, then prune exactly those.

    Only a prefix of the log is pruned: the first event still inside its retention period (six months at least, one
    year by default, three years for grant/consent/export events) stops the prefix. The archive is verified before
    anything is removed; the prune, its permit and a signed tombstone checkpoint (`pruned-below <leaf> <hash>`, the
    hash of the archive's manifest.json with the signer's hash: SHA-256, or SM3 in the SM suite) commit together, so
    the chain still verifies across the gap from the leaves that remain."""
    now = now or vault.clock()
    checkpoint_now(vault, force=True)
    with vault.session() as session:
        start = pruned_below(session)
        rows = session.execute(
            select(Leaf.leaf_index, AuditEvent.occurred_at, AuditEvent.action)
            .join(AuditEvent, and_(AuditEvent.chain_id == Leaf.chain_id, AuditEvent.seq == Leaf.seq))
            .where(Leaf.leaf_index >= start).order_by(Leaf.leaf_index))
        end = start
        for index, occurred_at, action in rows:
            if index != end or not retention.prunable(occurred_at, action, now=now,
                                                      retention_days=vault.settings.audit_retention_days):
                break
            end = index + 1
    if end == start:
        return {"archived": 0, "below_leaf": start}
    result = write_export(vault, since=None, until=None, out=out, leaf_range=(start, end))
    by = signer(vault)
    report = verify_bundle(out, by.vkey())
    if not report.ok:
        raise IntegrityFailure("The archive did not verify; nothing was pruned")
    archive_sha = HASHES[by.hash_name]((out / "manifest.json").read_bytes()).hexdigest()
    with vault.session() as session:
        try:
            log.lock_log(session)
            session.add(ArchivePermit(below_leaf=end, archive_sha256=archive_sha, created_at=now))
            session.flush()
            doomed = select(Leaf.chain_id, Leaf.seq).where(Leaf.leaf_index >= start, Leaf.leaf_index < end)
            removed = cast(CursorResult[Any], session.execute(
                delete(AuditEvent).where(tuple_(AuditEvent.chain_id, AuditEvent.seq).in_(doomed))
                .execution_options(synchronize_session=False))).rowcount
            audit_append.append(session, vault, identity=Identity(account_id="cli:archive", role="operator"),
                             ctx=RequestContext(request_id="archive"), action="audit.archive", outcome="allow",
                             resource_type="audit", resource_id=archive_sha[:32], reason=f"below-{end}")
            log.integrate(session, cache=vault.log_cache, signer=by, origin=vault.settings.audit_origin,
                          now=now, force=True, kind="tombstone", extensions=(f"pruned-below {end} {archive_sha}",))
            session.commit()
        except BaseException:
            session.rollback()
            vault.log_cache.reset()
            raise
    return {"archived": removed, "below_leaf": end, "archive_sha256": archive_sha,
            "event_count": result["event_count"]}
