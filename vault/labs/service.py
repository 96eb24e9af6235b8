"""Lab sheets become data: extraction jobs, encrypted results, patient corrections, trends.

Owns the `lab.extract` job (`run_extraction`, queued by the records service through `vault.jobs` and run off the
request path; the job is just a record id; `resume_pending` queues again at server start what a killed one left):
having `ocr.extract` run in the OCR worker process (vault/labs/ocr_worker.py: CPU, memory and wall-clock limits,
never in the server process), storing the LabReport sealed under the record's DEK, and the record's status pending →
done / needs_review / failed (with the OCR package's or the worker's stable error code). A failing page never takes
the worker down. Running the job twice does no harm
(a queue may: retries, a killed worker's jobs): it acts only on a record still `pending`, and stores its result only
if the record is still `pending`, so each result is stored once. `ocr/` stays pure: it gets bytes and
returns a report; identities, keys and the database stay here.
OCR is optional processing (PIPL-1): without the patient's `ocr` consent on the current notice an upload is stored
with status `declined` and nothing is read; the worker checks the consent again when it runs, so a withdrawal stops
queued jobs too. After giving consent the patient can ask for extraction of an earlier upload (`request_extraction`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, bindparam, select, update

from kms.stream import iter_decrypt
from vault import fields
from vault.access import gate
from vault.db.fastpath import HotStatement
from vault.db.models import LabCorrection, Record
from vault.errors import Conflict, InvalidInput, OcrDeclined, VaultError
from vault.identity import Identity, RequestContext
from vault.labs import ocr_worker
from vault.patients import privacy
from vault.records import service as records
from vault.records.service import DECLINED, EXTRACT_JOB, results_of, wants_extraction
from vault.records.uploads import blob_aad

if TYPE_CHECKING:
    from vault.runtime import Vault

log = logging.getLogger("healthvault.labs")
SYSTEM = Identity(account_id="system:ocr", role="system")
MAX_OCR_BYTES = 64 * 1024 * 1024
CORRECTABLE = ("value", "unit", "ref_low", "ref_high", "ref_text", "flag", "name", "code")




def ensure_not_declined(record) -> None:
    """Lab-result endpoints say plainly when there are no values because the patient declined OCR."""
    if record.ocr_status == DECLINED:
        raise declined_error()


def declined_error() -> VaultError:  # OcrDeclined
    return OcrDeclined(
        "No values were extracted because automatic reading (OCR) was declined. To have lab sheets read, give the "
        f"ocr consent (POST {privacy.CONSENT_ENDPOINT}), then ask for extraction "
        "(POST /v1/records/{record_id}/lab-results/extraction)",
        extra={"ocr_status": DECLINED, "consents": privacy.CONSENT_ENDPOINT})


def mark_pending(session, record_id: str) -> None:
    session.execute(update(Record).where(Record.id == record_id).values(ocr_status="pending", ocr_error=None))


def _where(record) -> dict:
    return dict(table="records", row_id=record.id, patient_id=record.patient_id)


def run_extraction(vault: Vault, record_id: str, *, worker: ocr_worker.OcrWorker | None = None) -> str:
    """Extract one record's lab sheet in the OCR worker process (this process's shared one unless given); returns the
    final status. Never raises (a failure is a status)."""
    try:
        with vault.session() as session:
            record = session.get(Record, record_id)
            if record is None:
                return "failed"
            if not privacy.ocr_allowed(session, vault, patient_id=record.patient_id):
                # Consent withdrawn (or the notice changed) after the job was queued: nothing is read.
                session.execute(update(Record).where(Record.id == record_id)
                                .values(ocr_status=DECLINED, ocr_error=None))
                session.commit()
                return DECLINED
            if record.ocr_status != "pending":
                return record.ocr_status or "failed"  # a job run twice (retry, stalled worker): done already
            target = gate.Target("record", record.id, record.patient_id, category=record.category,
                                 label=record.label)
            # The extraction is the vault processing PHI on the patient's behalf: on the record, not silent.
            gate.audit(vault, session, identity=SYSTEM, ctx=RequestContext(request_id=f"ocr-{record_id[:8]}"),
                       action="lab.extract", target=target, outcome="allow", reason="upload")
            session.commit()
            dek = vault.keys.open_data_key(record.patient_id, record.wrapped_dek)
            error: str | None
            if record.size_bytes > MAX_OCR_BYTES:
                status, error, payload = "failed", "too_large", None
            else:
                buffer = io.BytesIO()
                with vault.blobs.open(record.id) as source:
                    for chunk in iter_decrypt(dek, source, blob_aad(record_id=record.id, patient_id=record.patient_id)):
                        buffer.write(chunk)
                outcome = (worker or ocr_worker.shared()).extract(buffer.getvalue())
                del buffer
                status, error, payload = outcome.status, outcome.error, outcome.payload
            values: dict[str, object] = dict(ocr_status=status, ocr_error=error)
            if payload is not None:
                values["lab_results_enc"] = fields.seal(dek, payload, column="lab_results", **_where(record))
            stored = cast(CursorResult[Any], session.execute(
                update(Record).where(Record.id == record_id, Record.ocr_status == "pending").values(**values))).rowcount
            session.commit()
            return status if stored else _status_of(vault, record_id)  # another run stored it first: keep that
    except Exception as exc:  # noqa: BLE001 - the worker survives anything one page does
        log.error("lab extraction failed: %s", type(exc).__name__)
        with vault.session() as session:
            session.execute(update(Record).where(Record.id == record_id, Record.ocr_status == "pending")
                            .values(ocr_status="failed", ocr_error="internal"))
            session.commit()
        return "failed"


def _status_of(vault: Vault, record_id: str) -> str:
    with vault.session() as session:
        return session.scalar(select(Record.ocr_status).where(Record.id == record_id)) or "failed"


def resume_pending(vault: Vault) -> int:
    """Queue again every extraction left `pending` (a server killed mid-job, or before its queue ran); returns how
    many. Called once by `serve` at start. A job is idempotent: it re-reads the blob and writes the final status, so
    one run twice (several servers starting at once on PostgreSQL) only costs time."""
    with vault.session() as session:
        pending = list(session.scalars(select(Record.id).where(Record.ocr_status == "pending")))
    for record_id in pending:
        vault.jobs.submit(EXTRACT_JOB, record_id)
    return len(pending)


def correct(session, vault: Vault, *, identity: Identity, ctx: RequestContext, record_id: str, row: int, field: str,
            value) -> dict:
    """The patient corrects one extracted field; old and new are kept (sealed) in the correction history."""
    if field not in CORRECTABLE:
        raise InvalidInput(f"field must be one of {', '.join(CORRECTABLE)}", extra={"reason": "field"})
    record, dek = records.get_or_raise(session, vault, identity=identity, ctx=ctx, record_id=record_id,
                                       action="lab.correct")
    report = results_of(vault, record, dek)
    if report is None:
        ensure_not_declined(record)
        raise Conflict("This record has no extracted lab results (yet)", extra={"ocr_status": record.ocr_status})
    if not 0 <= row < len(report["results"]):
        raise InvalidInput("No such extracted row", extra={"reason": "row"})
    old = report["results"][row].get(field)
    report["results"][row][field] = value
    report["results"][row].setdefault("corrected_fields", []).append(field)
    correction_id = str(uuid.uuid4())
    change = json.dumps({"row": row, "field": field, "old": old, "new": value}, ensure_ascii=False)
    session.add(LabCorrection(id=correction_id, record_id=record.id, patient_id=record.patient_id,
                              account_id=identity.account_id, created_at=vault.clock(),
                              change_enc=fields.seal(dek, change, table="lab_corrections", column="change",
                                                     row_id=correction_id, patient_id=record.patient_id)))
    session.execute(update(Record).where(Record.id == record.id).values(
        lab_results_enc=fields.seal(dek, json.dumps(report, ensure_ascii=False), column="lab_results",
                                    **_where(record))))
    session.commit()
    return report


def history(session, *, record, dek) -> list[dict]:
    rows = session.scalars(select(LabCorrection).where(LabCorrection.record_id == record.id)
                           .order_by(LabCorrection.created_at))
    return [{**json.loads(fields.open_text(dek, c.change_enc, table="lab_corrections", column="change",
                                           row_id=c.id, patient_id=c.patient_id)),
             "at": c.created_at.isoformat()} for c in rows]


@dataclasses.dataclass(frozen=True)
class TrendPoint:
    record_id: str
    at: str
    value: str | None
    value_num: float | None
    unit: str | None
    flag: str | None


# Only the columns a trend reads, on the driver's cursor (vault/db/fastpath): this runs on every console record page.
_TREND_ROWS = HotStatement(select(Record.id, Record.patient_id, Record.wrapped_dek, Record.lab_results_enc,
                                  Record.created_at)
                           .where(Record.patient_id == bindparam("patient_id"), Record.lab_results_enc.is_not(None))
                           .order_by(Record.created_at, Record.id))


def trends(session, vault: Vault, *, identity: Identity, ctx: RequestContext, code: str,
           opened: Mapping[str, dict] | None = None) -> list[TrendPoint]:
    """One analyte across the caller's own lab reports, oldest first.

    `opened`: reports of the caller's own records this request has already read through the gate and decrypted (by
    record id; the record page passes the one it shows), used as they are instead of being decrypted again. Only
    the caller's own records are visited whatever it holds."""
    code = code.strip().upper()
    if not code or len(code) > 32:
        raise InvalidInput("code is required", extra={"reason": "code"})
    patient_id = identity.patient_id
    gate.enter(vault, session, identity=identity, ctx=ctx, action="lab.read",
               target=gate.Target("patient", patient_id, patient_id, exists=patient_id is not None))
    assert patient_id is not None  # the gate refused (404) a caller who is no patient
    session.commit()
    if not privacy.ocr_allowed(session, vault, patient_id=patient_id):
        raise declined_error()
    points = []
    for record in _TREND_ROWS.rows(session, {"patient_id": patient_id}):
        report = (opened or {}).get(record.id) or results_of(vault, record)
        assert report is not None  # only records with results were selected
        header = report.get("header") or {}
        at = header.get("collected_at") or header.get("reported_at") or record.created_at.isoformat()
        for row in report["results"]:
            if code in {str(row.get("std_code") or "").upper(), str(row.get("code") or "").upper()}:
                points.append(TrendPoint(record.id, at, row.get("value"), row.get("value_num"), row.get("unit"),
                                         row.get("flag")))
    return sorted(points, key=lambda p: p.at)  # stable: same-day sheets keep their upload order


def request_extraction(session, vault: Vault, *, identity: Identity, ctx: RequestContext, record_id: str) -> str:
    """Queue (again) the extraction of one lab sheet: after OCR consent was given late, or after a failure.

    The gate decides as for any change to the record (`record.update`: the owner only; grants never carry it)."""
    record, _dek = records.get_or_raise(session, vault, identity=identity, ctx=ctx, record_id=record_id,
                                        action="record.update")
    if not wants_extraction(record.category):
        raise Conflict("Only lab reports are read by OCR", extra={"ocr_status": record.ocr_status})
    if record.ocr_status == "pending":
        raise Conflict("An extraction of this record is already queued", extra={"ocr_status": "pending"})
    if not privacy.ocr_allowed(session, vault, patient_id=record.patient_id):
        raise declined_error()
    mark_pending(session, record.id)
    vault.jobs.enqueue(session, EXTRACT_JOB, record.id)
    session.commit()
    return "pending"
