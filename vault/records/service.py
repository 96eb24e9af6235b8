"""Health records: create from an upload, list, read metadata, stream content back.

Owns the record rows and their blobs. Each record has its own DEK (wrapped by the patient KEK) that seals the blob and
every free-text column. Every call passes the gate; reads commit their audit event before any field is decrypted (on
SQLite's read fast path that commit hands the event to the batch, which writes it, and nothing decrypted leaves
before the batch's COMMIT: see vault/db/fastpath/lane.py). A record row exists only if its blob was committed; a
failed create removes the blob it wrote, and a blob orphaned by a crash between the two commits is swept at the next
start. `allows` only asks the gate (a page offering a link); it reads and audits nothing.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hmac
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

from pydantic import Field
from sqlalchemy import and_, bindparam, or_, select
from sqlalchemy.orm import Session

from kms import CryptoError, DataKey
from kms.stream import iter_decrypt
from vault import fields, text
from vault.access import gate, integrity
from vault.db.fastpath import HotStatement
from vault.db.models import CATEGORIES, LABELS, Record
from vault.errors import IntegrityFailure, InvalidInput, NotFound
from vault.identity import Identity, RequestContext
from vault.patients import privacy
from vault.records.uploads import UploadSink, blob_aad

if TYPE_CHECKING:
    from vault.runtime import Vault

MAX_TITLE_LENGTH = 200
MAX_FILENAME_LENGTH = 255
MAX_PAGE = 100
# Lab sheets are read by OCR off the request path: the job kind the labs domain handles (registered by the runtime).
EXTRACT_JOB = "lab.extract"
EXTRACTABLE = ("lab_report",)
DECLINED = "declined"


@dataclasses.dataclass(frozen=True)
class RecordView:
    """A record's metadata as its reader sees it; the HTTP API serialises this type (api/schemas/records.py)."""

    record_id: str
    patient_id: Annotated[str, Field(exclude=True)]  # for the services; never serialised at the edge
    category: str
    label: str
    content_type: str
    size_bytes: int
    created_at: dt.datetime
    title: str | None
    filename: str | None
    sha256: str
    ocr_status: str | None = None
    ocr_error: str | None = None
    lab_results: dict | None = None


def check_metadata(*, category: str, title: str | None, filename: str | None, label: str = "normal") -> None:
    """Reject bad form fields with a clear reason (called before the blob is committed)."""
    if label not in LABELS:
        raise InvalidInput(f"label must be one of {', '.join(LABELS)}", extra={"reason": "label"})
    if category not in CATEGORIES:
        raise InvalidInput(f"category must be one of {', '.join(CATEGORIES)}", extra={"reason": "category"})
    if title is not None and (len(title) > MAX_TITLE_LENGTH or not text.is_inert(title)):
        raise InvalidInput(f"title must be at most {MAX_TITLE_LENGTH} characters without control or direction "
                           "characters", extra={"reason": "title"})
    if filename is not None and (len(filename) > MAX_FILENAME_LENGTH or not text.is_inert(filename)):
        raise InvalidInput(f"filename must be at most {MAX_FILENAME_LENGTH} characters without control or direction "
                           "characters", extra={"reason": "filename"})


def authorize_upload(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, record_id: str,
                     patient_id: str | None) -> str:
    """Pre-check before any byte is read; a denial is audited now, an allowed upload when its row is written."""
    target = gate.Target("record", record_id, patient_id, exists=patient_id is not None)
    gate.enter(vault, session, identity=identity, ctx=ctx, action="record.create", target=target,
               audit_allow=False)
    return patient_id  # type: ignore[return-value]


def create(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, sink: UploadSink, category: str,
           title: str | None, filename: str | None, label: str = "normal") -> RecordView:
    """Commit the blob and its row together; on any failure neither remains."""
    check_metadata(category=category, title=title, filename=filename, label=label)
    sink.seal()  # the sanitized copy is the record (vault/records/hygiene.py); a refused file stores nothing
    target = gate.Target("record", sink.record_id, sink.patient_id, category=category, label=label)
    gate.enter(vault, session, identity=identity, ctx=ctx, action="record.create", target=target)
    where = dict(table="records", row_id=sink.record_id, patient_id=sink.patient_id)
    record = Record(
        id=sink.record_id,
        patient_id=sink.patient_id,
        category=category,
        label=label,
        label_enc=fields.seal(sink.dek, label, column="label", **where),
        category_enc=fields.seal(sink.dek, category, column="category", **where),
        content_type=sink.content_type,
        size_bytes=sink.size,
        created_at=vault.clock(),
        created_by=identity.account_id,
        wrapped_dek=sink.wrapped_dek,
        title_enc=fields.seal(sink.dek, title, column="title", **where) if title is not None else None,
        filename_enc=fields.seal(sink.dek, filename, column="filename", **where) if filename is not None else None,
        sha256_enc=fields.seal(sink.dek, sink.sha256, column="sha256", **where),
        ocr_status=initial_status(session, vault, patient_id=sink.patient_id, category=category),
    )
    session.add(record)
    session.flush()
    sink.commit()
    try:
        if record.ocr_status == "pending":  # out of the request path; queued only if this transaction commits
            vault.jobs.enqueue(session, EXTRACT_JOB, record.id)
        session.commit()
    except BaseException:
        session.rollback()
        sink.discard_committed()
        raise
    return _view(record, sink.dek)


ORPHAN_MIN_AGE_SECONDS = 3600.0


def sweep_orphan_blobs(vault: Vault, *, min_age_seconds: float = ORPHAN_MIN_AGE_SECONDS) -> int:
    """Delete committed blobs that no record row names, once older than `min_age_seconds`; returns how many.

    `create` commits the blob, then the row: a process killed between the two leaves a blob no row will ever name
    (ciphertext whose DEK was wrapped only in the lost row, so unreadable, but still a file). The age keeps an upload
    of another process that is between its two commits out of reach. Called by `serve` at start."""
    import time

    candidates = vault.blobs.committed_before(time.time() - min_age_seconds)
    removed = 0
    for start in range(0, len(candidates), 500):
        batch = candidates[start:start + 500]
        with vault.session() as session:
            named = set(session.scalars(select(Record.id).where(Record.id.in_(batch))))
        for blob_id in batch:
            if blob_id not in named:
                vault.blobs.delete(blob_id)
                removed += 1
    return removed


def wants_extraction(category: str) -> bool:
    return category in EXTRACTABLE


def initial_status(session: Session, vault: Vault, *, patient_id: str, category: str) -> str | None:
    """A new upload's OCR status: None (not a lab sheet), `pending` (queued) or `declined` (no OCR consent)."""
    if not wants_extraction(category):
        return None
    return "pending" if privacy.ocr_allowed(session, vault, patient_id=patient_id) else DECLINED


def results_of(vault: Vault, record: Record, dek: DataKey | None = None) -> dict | None:
    """The decrypted LabReport of a record the caller has already been allowed to read (pass its DEK if open)."""
    if record.lab_results_enc is None:
        return None
    dek = dek or vault.keys.open_data_key(record.patient_id, record.wrapped_dek)
    return json.loads(fields.open_text(dek, record.lab_results_enc, column="lab_results",
                                       table="records", row_id=record.id, patient_id=record.patient_id))


def _view(record: Record, dek) -> RecordView:
    where = dict(table="records", row_id=record.id, patient_id=record.patient_id)
    return RecordView(
        record_id=record.id,
        patient_id=record.patient_id,
        category=record.category,
        label=record.label,
        content_type=record.content_type,
        size_bytes=record.size_bytes,
        created_at=record.created_at,
        title=fields.open_text(dek, record.title_enc, column="title", **where) if record.title_enc else None,
        filename=fields.open_text(dek, record.filename_enc, column="filename", **where)
        if record.filename_enc else None,
        sha256=fields.open_bytes(dek, record.sha256_enc, column="sha256", **where).hex(),
        ocr_status=record.ocr_status,
        ocr_error=record.ocr_error,
    )


def _open_dek(vault: Vault, record: Record):
    try:
        return vault.keys.open_data_key(record.patient_id, record.wrapped_dek)
    except CryptoError as exc:
        raise IntegrityFailure() from exc


_RECORDS = Record.__table__
_BY_ID = HotStatement(select(_RECORDS).where(_RECORDS.c.id == bindparam("id")))


def get(session: Session, *, record_id: str):
    """The record's row (read-only, attribute access like the model), or None.

    Run on the driver's cursor: the read path's hottest query, where the ORM identity-map load and even SQLAlchemy's
    Core execution path cost several times the database work."""
    return _BY_ID.first(session, {"id": record_id})


def target_of(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, record_id: str,
              action: str) -> tuple[Record | None, DataKey | None, gate.Target]:
    """The record row (or None), its DEK and the gate target the decision reads, for a caller about to decide.

    The DEK is unwrapped before the decision because the sealed label and category it checks are what the decision
    reads (a mismatch: audited as denied, the alarm raised, IntegrityFailure); callers decrypt with the same key
    instead of unwrapping it again."""
    record = get(session, record_id=record_id)
    dek = None
    if record is not None:
        dek = _open_dek(vault, record)
        if not _sealed_scope_holds(record, dek):
            integrity.refuse(vault, session, identity=identity, ctx=ctx, action=action,
                             target=gate.Target("record", record_id, record.patient_id))
    target = gate.Target("record", record_id, record.patient_id if record else None, exists=record is not None,
                         category=record.category if record else None, label=record.label if record else None)
    return record, dek, target


def get_or_raise(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, record_id: str,
                 action: str) -> tuple[Record, DataKey]:
    """The record and its DEK, if the gate lets this caller reach it; NotFound otherwise (existence never leaks)."""
    record, dek, target = target_of(session, vault, identity=identity, ctx=ctx, record_id=record_id, action=action)
    gate.enter(vault, session, identity=identity, ctx=ctx, action=action, target=target, deny_as=NotFound)
    session.commit()
    return record, dek  # type: ignore[return-value]


def allows(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, record_id: str,
           action: str) -> bool:
    """Would the gate let this caller take `action` on this record now? A question for a page deciding whether to
    offer a link (the console's download button), not an access: nothing is decrypted and nothing is audited. Taking
    the action goes through `get_or_raise` (or the watermark's `authorize`), which decides again and audits."""
    record = get(session, record_id=record_id)
    if record is None:
        return False
    target = gate.Target("record", record_id, record.patient_id, category=record.category, label=record.label)
    return gate.decide(session, vault, identity, action, target, ctx).allowed


def _sealed_scope_holds(record: Record, dek: DataKey) -> bool:
    """The label and the category decide who may see a record: either edited in the database must not widen access
    (AC-6, INT-1). Each is sealed under the record DEK; a missing or mismatching seal fails."""
    where = dict(table="records", row_id=record.id, patient_id=record.patient_id)
    if record.label_enc is None or record.category_enc is None:
        return False
    try:
        label = fields.open_text(dek, record.label_enc, column="label", **where)
        category = fields.open_text(dek, record.category_enc, column="category", **where)
    except IntegrityFailure:
        return False
    return hmac.compare_digest(label.encode(), record.label.encode()) \
        and hmac.compare_digest(category.encode(), record.category.encode())


def read(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, record_id: str) -> RecordView:
    """Metadata, and the extracted lab values once the extraction has finished."""
    record, dek = get_or_raise(session, vault, identity=identity, ctx=ctx, record_id=record_id,
                               action="record.read")
    view = _view(record, dek)
    if record.lab_results_enc is not None:
        view = dataclasses.replace(view, lab_results=results_of(vault, record, dek))
    return view


def open_content(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext,
                 record_id: str) -> tuple[RecordView, Iterator[bytes]]:
    """Metadata and a plaintext chunk iterator; each chunk is authenticated before it is yielded."""
    record, dek = get_or_raise(session, vault, identity=identity, ctx=ctx, record_id=record_id,
                               action="record.download")
    view = _view(record, dek)
    aad = blob_aad(record_id=record.id, patient_id=record.patient_id)
    source = vault.blobs.open(record.id)

    def chunks() -> Iterator[bytes]:
        try:
            yield from iter_decrypt(dek, source, aad)
        except CryptoError as exc:
            raise IntegrityFailure() from exc
        finally:
            source.close()

    return view, chunks()


def _encode_cursor(record: Record) -> str:
    raw = f"{record.created_at.isoformat()}|{record.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, record_id = raw.split("|", 1)
        return text.utc_instant(dt.datetime.fromisoformat(stamp)), record_id
    except (ValueError, UnicodeDecodeError) as exc:  # to_utc: a cursor's time carries an offset and is in range
        raise InvalidInput("Invalid cursor", extra={"reason": "cursor"}) from exc


def list_own(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, limit: int = 50,
             cursor: str | None = None) -> tuple[list[RecordView], str | None]:
    """The caller's own records, newest first, with an opaque cursor for the next page."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}", extra={"reason": "limit"})
    patient_id = identity.patient_id
    target = gate.Target("patient", patient_id, patient_id, exists=patient_id is not None)
    gate.enter(vault, session, identity=identity, ctx=ctx, action="record.list", target=target)
    session.commit()
    query = select(Record).where(Record.patient_id == patient_id)
    if cursor:
        stamp, last_id = _decode_cursor(cursor)
        query = query.where(or_(Record.created_at < stamp, and_(Record.created_at == stamp, Record.id < last_id)))
    rows = list(session.scalars(query.order_by(Record.created_at.desc(), Record.id.desc()).limit(limit + 1)))
    page = rows[:limit]
    views = [_view(r, _open_dek(vault, r)) for r in page]
    return views, (_encode_cursor(page[-1]) if len(rows) > limit else None)
