"""The patient's copy of their own data (PIPL 45: access, copy, portability; COMPLIANCE PIPL-6).

Owns the export package: `start` (audited `export.create`; the build runs on a thread of this process, because the
passphrase must never be stored or queued), the build (`_build`: streamed, one record at a time, so memory stays
bounded whatever the number or size of records), `get` (status and progress, `export.read`) and `open_download`
(`export.download`: served once, within 24 hours of being built, then deleted).

The package is an AES-256 encrypted ZIP (WinZip AES, "WZ_AES", via pyzipper). Why a ZIP and not an AES-256 PDF
portfolio: 7-Zip, WinRAR, Bandizip, PeaZip and the file managers of most Android phones (and iOS through common
apps) open AES ZIPs with a password, and a ZIP can hold the record files unchanged (PDF, JPEG, PNG, HEIC) next to
machine-readable JSON, CSV and FHIR; a PDF portfolio needs a full PDF reader that supports attachments and AES-256
(R6) encryption, which most phone viewers lack. ZIP entry names are not encrypted, so they carry no personal data
(`records/0001.pdf`, `fhir/0001.json`, ...); everything personal is inside the encrypted entries. At rest the finished
ZIP is sealed again under a per-export DEK (wrapped by the patient KEK: erasure shreds it).

Contents: README.txt, manifest.json (every record: index, id, category, time, type, size, SHA-256, title),
records/NNNN.ext (the stored files, byte for byte), lab-results.json and lab-results.csv, fhir/NNNN.json (the FHIR
R4 Bundle of every lab report, vault/labs/fhir.py), grants.json (the grants the patient gave), access-log.json and
access-log.csv (who accessed the patient's data), summary.pdf (a summary in Chinese).

Never: stores, logs or queues the passphrase (it lives in this process's memory for the build only and is then
overwritten); lets anyone but the patient start, see or download an export; serves a package twice or after 24 h.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from audit.models import AuditEvent
from consent.models import Grant
from kms import CryptoError, envelope
from kms.stream import StreamEncryptor, iter_decrypt
from vault import fields
from vault.access import audit_append, gate
from vault.auditing import trail
from vault.db.models import Account, Patient, PatientExport, Record
from vault.errors import Conflict, IntegrityFailure, InvalidInput, NotFound, VaultError
from vault.identity import Identity, RequestContext
from vault.labs import fhir
from vault.records import service as records
from vault.records.uploads import blob_aad

if TYPE_CHECKING:
    from vault.runtime import Vault

log = logging.getLogger("healthvault.exports")
TTL = dt.timedelta(hours=24)
STALE_AFTER = dt.timedelta(minutes=10)
MIN_PASSPHRASE = 12
MAX_PASSPHRASE = 256
SYSTEM = Identity(account_id="system:export", role="system")
ACTIVE = ("queued", "running")
EXTENSIONS = {"application/pdf": ".pdf", "image/jpeg": ".jpg", "image/png": ".png", "image/heic": ".heic"}
CATEGORY_NAMES = {"lab_report": "检验报告", "exam_report": "检查报告", "medical_record": "病历", "id_document": "证件",
                  "other": "其他"}
SHEET_TZ = dt.timezone(dt.timedelta(hours=8))
_CHUNK = 1024 * 1024


class Gone(VaultError):
    slug = "gone"
    status = 410
    title = "This export was already downloaded or has expired"


@dataclasses.dataclass(frozen=True)
class ExportView:
    export_id: str
    status: str
    done: int
    total: int
    created_at: dt.datetime
    expires_at: dt.datetime
    size_bytes: int | None
    error: str | None


def _view(row: PatientExport) -> ExportView:
    return ExportView(export_id=row.id, status=row.status, done=row.done, total=row.total,
                      created_at=row.created_at, expires_at=row.expires_at, size_bytes=row.size_bytes,
                      error=row.error)


def package_aad(*, export_id: str, patient_id: str) -> bytes:
    return envelope.field_aad(table="patient_exports", column="package", row_id=export_id, patient_id=patient_id)


def check_passphrase(passphrase: str) -> bytes:
    """The ZIP's AES key is derived from this passphrase (PBKDF2, 1000 rounds in WinZip AES): it must be long."""
    if not isinstance(passphrase, str) or not MIN_PASSPHRASE <= len(passphrase) <= MAX_PASSPHRASE:
        raise InvalidInput(f"passphrase must be {MIN_PASSPHRASE}-{MAX_PASSPHRASE} characters",
                           extra={"reason": "passphrase"})
    if len(set(passphrase)) < 6 or any(ord(c) < 32 for c in passphrase):
        raise InvalidInput("passphrase is too simple (use at least 6 different printable characters)",
                           extra={"reason": "passphrase"})
    return passphrase.encode("utf-8")


# ---------------------------------------------------------------------------------------------------------- requests
def start(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, passphrase: str) -> ExportView:
    """Audited (`export.create`) before anything is read; the build then runs on a thread of this process."""
    secret = bytearray(check_passphrase(passphrase))
    patient_id = identity.patient_id or ""
    export_id = str(uuid.uuid4())
    target = gate.Target("export", export_id, patient_id)  # staff have no own data: the gate says 403
    gate.enter(vault, session, identity=identity, ctx=ctx, action="export.create", target=target)
    now = vault.clock()
    busy = session.scalar(select(func.count()).select_from(PatientExport).where(
        PatientExport.patient_id == patient_id, PatientExport.status.in_(ACTIVE),
        PatientExport.updated_at > now - STALE_AFTER))
    if busy:
        session.commit()  # the request stays on record
        raise Conflict("An export is already being built", extra={"status": "running"})
    sweep(session, vault)
    dek, wrapped = vault.keys.new_data_key(patient_id)
    row = PatientExport(id=export_id, patient_id=patient_id, account_id=identity.account_id, status="queued", done=0,
                        total=0, created_at=now, updated_at=now, expires_at=now + TTL, wrapped_dek=wrapped)
    session.add(row)
    session.commit()
    view = _view(row)
    threading.Thread(target=_build, args=(vault, export_id, patient_id, secret, dek), name=f"export-{export_id[:8]}",
                     daemon=True).start()
    return view


def _own(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, export_id: str,
         action: str) -> PatientExport:
    row = session.get(PatientExport, export_id)
    target = gate.Target("export", export_id, row.patient_id if row else None, exists=row is not None)
    gate.enter(vault, session, identity=identity, ctx=ctx, action=action, target=target, deny_as=NotFound)
    if row is None:  # the gate denies what does not exist; kept for the type checker
        raise NotFound()
    return row


def _settle(session: Session, vault: Vault, row: PatientExport) -> None:
    """Expire a package past its 24 hours; report a build whose process went away as failed."""
    now = vault.clock()
    if row.status == "done" and now >= row.expires_at:
        vault.blobs.delete(row.id)
        row.status, row.updated_at = "expired", now
    elif row.status in ACTIVE and now - row.updated_at > STALE_AFTER:
        vault.blobs.delete(row.id)
        row.status, row.error, row.updated_at = "failed", "interrupted", now


def sweep(session: Session, vault: Vault) -> int:
    """Delete every package past its 24 hours (anyone's: a package nobody asks about again must not stay). Run when
    any export starts; the status and download requests expire their own package too."""
    due = list(session.scalars(select(PatientExport).where(PatientExport.status == "done",
                                                           PatientExport.expires_at <= vault.clock())))
    for row in due:
        _settle(session, vault, row)
    return len(due)


def get(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, export_id: str) -> ExportView:
    row = _own(session, vault, identity=identity, ctx=ctx, export_id=export_id, action="export.read")
    _settle(session, vault, row)
    session.commit()
    return _view(row)


def open_download(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext,
                  export_id: str) -> tuple[int, Iterator[bytes]]:
    """(size, ciphertext-of-the-ZIP → plaintext ZIP chunks). The package is claimed before a byte is sent: it is
    served once, and deleted when the response ends (or fails)."""
    row = _own(session, vault, identity=identity, ctx=ctx, export_id=export_id, action="export.download")
    _settle(session, vault, row)
    if row.status in ("downloaded", "expired"):
        session.commit()
        raise Gone()
    if row.status != "done":
        session.commit()
        raise Conflict("The export is not ready", extra={"status": row.status})
    claim = (update(PatientExport).where(PatientExport.id == row.id, PatientExport.status == "done")
             .values(status="downloaded", downloaded_at=vault.clock(), updated_at=vault.clock()))
    claimed: Any = session.execute(claim)
    session.commit()
    if claimed.rowcount != 1:
        raise Gone()
    dek = vault.keys.open_data_key(row.patient_id, row.wrapped_dek)
    source = vault.blobs.open(row.id)
    aad = package_aad(export_id=row.id, patient_id=row.patient_id)

    def chunks() -> Iterator[bytes]:
        try:
            yield from iter_decrypt(dek, source, aad)
        except CryptoError as exc:
            raise IntegrityFailure() from exc
        finally:
            source.close()
            vault.blobs.delete(row.id)

    return row.size_bytes or 0, chunks()


# ------------------------------------------------------------------------------------------------------------- build
class _SealedWriter:
    """A write-only, non-seekable file object: ZIP bytes in, sealed segments into a temp blob."""

    def __init__(self, temp, encryptor: StreamEncryptor) -> None:
        self.temp = temp
        self.encryptor = encryptor
        self.size = 0

    def write(self, data) -> int:
        self.size += len(data)
        self.temp.write(self.encryptor.update(bytes(data)))
        return len(data)

    def flush(self) -> None:
        return None


def _progress(vault: Vault, export_id: str, **values: Any) -> None:
    with vault.session() as session:
        session.execute(update(PatientExport).where(PatientExport.id == export_id)
                        .values(updated_at=vault.clock(), **values))
        session.commit()


def _build(vault: Vault, export_id: str, patient_id: str, passphrase: bytearray, dek) -> None:
    """Never raises: a failure is the export's status (with a stable code), and the half-written blob is removed."""
    temp = None
    try:
        with vault.session() as session:
            record_ids = list(session.scalars(select(Record.id).where(Record.patient_id == patient_id)
                                              .order_by(Record.created_at, Record.id)))
        _progress(vault, export_id, status="running", total=len(record_ids) + 4)
        temp = vault.blobs.create_temp()
        writer = _SealedWriter(temp, StreamEncryptor(dek, package_aad(export_id=export_id, patient_id=patient_id)))
        counts = _write_package(vault, writer, export_id=export_id, patient_id=patient_id, record_ids=record_ids,
                                passphrase=bytes(passphrase))
        temp.write(writer.encryptor.finalize())
        temp.commit(export_id)
        temp = None
        now = vault.clock()
        with vault.session() as session:
            session.execute(update(PatientExport).where(PatientExport.id == export_id).values(
                status="done", done=len(record_ids) + 4, size_bytes=writer.size, updated_at=now,
                expires_at=now + TTL))
            gate.audit(vault, session, identity=SYSTEM, ctx=RequestContext(request_id=f"export-{export_id[:8]}"),
                       action="export.build", target=gate.Target("export", export_id, patient_id), outcome="allow",
                       reason=f"records={counts['records']}")
            session.commit()
    except Exception as exc:  # noqa: BLE001 - the build thread reports every failure through the export's status
        log.error("export build failed: %s", type(exc).__name__)
        if temp is not None:
            temp.discard()
        try:
            _progress(vault, export_id, status="failed", error=type(exc).__name__[:32])
        except Exception:  # noqa: BLE001 - the database itself is gone; the stale check reports it later
            log.error("export status could not be written")
    finally:
        for i in range(len(passphrase)):
            passphrase[i] = 0
        dek.wipe()


def _when(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat() if moment else None


def _write_package(vault: Vault, writer: _SealedWriter, *, export_id: str, patient_id: str, record_ids: list[str],
                   passphrase: bytes) -> dict:
    import pyzipper  # type: ignore[import-untyped]

    manifest: list[dict] = []
    lab_rows = 0
    with pyzipper.AESZipFile(writer, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(passphrase)
        zf.setencryption(pyzipper.WZ_AES, nbits=256)
        zf.writestr("README.txt", _readme())
        # 1. the record files, byte for byte, one at a time
        for n, record_id in enumerate(record_ids, start=1):
            with vault.session() as session:
                record = session.get(Record, record_id)
                if record is None:  # deleted meanwhile
                    continue
                key = vault.keys.open_data_key(record.patient_id, record.wrapped_dek)
                view = records._view(record, key)
            name = f"records/{n:04d}{EXTENSIONS.get(view.content_type, '.bin')}"
            digest = hashlib.sha256()
            with vault.blobs.open(record_id) as source, zf.open(name, "w") as entry:
                for chunk in iter_decrypt(key, source, blob_aad(record_id=record_id, patient_id=patient_id)):
                    digest.update(chunk)
                    entry.write(chunk)
            if digest.hexdigest() != view.sha256:
                raise IntegrityFailure()
            manifest.append({"index": n, "file": name, "record_id": record_id, "category": view.category,
                             "label": view.label, "created_at": _when(view.created_at),
                             "content_type": view.content_type, "size_bytes": view.size_bytes, "sha256": view.sha256,
                             "title": view.title, "filename": view.filename, "ocr_status": view.ocr_status,
                             "has_lab_results": record.lab_results_enc is not None})
            _progress(vault, export_id, done=n)
        # 2. lab results (JSON and CSV) and the FHIR Bundle of every report
        lab_rows = _write_labs(vault, zf, manifest, patient_id=patient_id)
        _progress(vault, export_id, done=len(record_ids) + 1)
        # 3. grants given and the access log
        grants = _write_grants(vault, zf, patient_id=patient_id)
        accesses = _write_access_log(vault, zf, patient_id=patient_id)
        _progress(vault, export_id, done=len(record_ids) + 2)
        # 4. the summary in Chinese and the manifest
        with vault.session() as session:
            patient = _patient(session, patient_id)
            profile_key = vault.keys.open_data_key(patient.id, patient.wrapped_dek)
            name = fields.open_text(profile_key, patient.real_name_enc, column="real_name", table="patients",
                                    row_id=patient.id, patient_id=patient.id)
        zf.writestr("summary.pdf", _summary_pdf(vault, export_id=export_id, name=name, manifest=manifest,
                                                lab_rows=lab_rows, grants=grants, accesses=accesses))
        zf.writestr("manifest.json", json.dumps({
            "format": "healthvault-export/v1", "export_id": export_id, "created_at": _when(vault.clock()),
            "records": manifest, "lab_result_rows": lab_rows, "grants": grants, "access_events": accesses,
            "entries": ["README.txt", "manifest.json", "records/", "lab-results.json", "lab-results.csv", "fhir/",
                        "grants.json", "access-log.json", "access-log.csv", "summary.pdf"]},
            ensure_ascii=False, indent=1).encode())
    return {"records": len(manifest)}


_LAB_COLUMNS = ("record_index", "record_id", "row", "name", "code", "loinc", "value", "value_num", "unit", "ref_low",
                "ref_high", "ref_text", "flag", "needs_review", "collected_at", "reported_at")


def _write_labs(vault: Vault, zf, manifest: list[dict], *, patient_id: str) -> int:
    """lab-results.json (streamed as one array), then lab-results.csv, then fhir/NNNN.json: one report in memory at
    a time (each pass opens the sealed results again; they are small)."""
    with_labs = [m for m in manifest if m["has_lab_results"]]

    def reports() -> Iterator[tuple[dict, dict, Any, Any]]:  # (manifest entry, LabReport, record, its DEK)
        for entry in with_labs:
            with vault.session() as session:
                record = session.get(Record, entry["record_id"])
                if record is None:
                    continue
                key = vault.keys.open_data_key(record.patient_id, record.wrapped_dek)
                report = records.results_of(vault, record, key)
                if report is not None:
                    yield entry, report, record, key

    rows = 0
    with zf.open("lab-results.json", "w") as raw:
        raw.write(b"[")
        for i, (entry, report, _record, _key) in enumerate(reports()):
            item = {"record_index": entry["index"], "record_id": entry["record_id"], "report": report}
            raw.write((b"," if i else b"") + json.dumps(item, ensure_ascii=False).encode())
        raw.write(b"]")
    with zf.open("lab-results.csv", "w") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        out = csv.writer(text)
        out.writerow(_LAB_COLUMNS)
        for entry, report, _record, _key in reports():
            header = report.get("header") or {}
            for n, row in enumerate(report.get("results") or []):
                out.writerow([entry["index"], entry["record_id"], n, row.get("name"), row.get("std_code") or
                              row.get("code"), row.get("loinc"), row.get("value"), row.get("value_num"),
                              row.get("unit"), row.get("ref_low"), row.get("ref_high"), row.get("ref_text"),
                              row.get("flag"), row.get("needs_review"), header.get("collected_at"),
                              header.get("reported_at")])
                rows += 1
        text.flush()
        text.detach()
    for entry, _report, record, key in reports():
        with vault.session() as session:
            try:
                bundle = fhir.bundle_of(session, vault, record=record, dek=key, for_patient=True)
            except VaultError:
                continue  # no lab values (declined, failed): nothing to map
        zf.writestr(f"fhir/{entry['index']:04d}.json", json.dumps(bundle, ensure_ascii=False, indent=1).encode())
    return rows


def _patient(session: Session, patient_id: str) -> Patient:
    patient = session.get(Patient, patient_id)
    if patient is None:
        raise NotFound()
    return patient


def _write_grants(vault: Vault, zf, *, patient_id: str) -> int:
    with vault.session() as session:
        patient = _patient(session, patient_id)
        key = vault.keys.open_data_key(patient.id, patient.wrapped_dek)
        rows = session.execute(select(Grant, Account.username, Account.role)
                               .outerjoin(Account, Account.id == Grant.grantee_id)
                               .where(Grant.patient_id == patient_id).order_by(Grant.created_at)).all()
        grants = [{"grant_id": g.id, "grantee": username, "grantee_role": role, "record_ids": json.loads(g.record_ids),
                   "categories": json.loads(g.categories), "include_future": g.include_future,
                   "actions": json.loads(g.actions),
                   "purpose": fields.open_text(key, g.purpose_enc, table="grants", column="purpose", row_id=g.id,
                                               patient_id=g.patient_id),
                   "consult_ref": g.consult_ref, "not_before": _when(g.not_before), "expires_at": _when(g.expires_at),
                   "created_at": _when(g.created_at), "revoked_at": _when(g.revoked_at)}
                  for g, username, role in rows]
    zf.writestr("grants.json", json.dumps(grants, ensure_ascii=False, indent=1).encode())
    return len(grants)


_ACCESS_COLUMNS = ("time", "action", "outcome", "actor_role", "actor", "resource_type", "resource_id", "grant_id",
                   "reason")


def _write_access_log(vault: Vault, zf, *, patient_id: str) -> int:
    """Every audited access to the patient's data (the access log's actions), with staff names: streamed twice from
    the database (JSON, then CSV: a ZIP has one entry open at a time), never held whole."""
    with vault.session() as session:
        mine = audit_append.patient_pseudonyms(vault, patient_id)
        patient_account = session.scalar(select(Account.id).where(Account.patient_id == patient_id))
        me = set(audit_append.actor_pseudonyms(vault, patient_account)) if patient_account else set()
        staff = {p: a.username for a in session.scalars(select(Account).where(Account.role != "patient"))
                 for p in audit_append.actor_pseudonyms(vault, a.id)}
    query = (select(AuditEvent).where(AuditEvent.patient_pseudonym.in_(mine),
                                      AuditEvent.action.in_(trail.PATIENT_VISIBLE_ACTIONS))
             .order_by(AuditEvent.occurred_at, AuditEvent.id).execution_options(yield_per=500))

    def events() -> Iterator[dict]:
        with vault.session() as session:
            for event in session.scalars(query):
                who = "本人 (you)" if event.actor in me else staff.get(event.actor, "其他账户 (another account)")
                yield {"time": _when(event.occurred_at), "action": event.action, "outcome": event.outcome,
                       "actor_role": event.actor_role, "actor": who, "resource_type": event.resource_type,
                       "resource_id": event.resource_id, "grant_id": event.grant_id, "reason": event.reason}

    count = 0
    with zf.open("access-log.json", "w") as raw:
        raw.write(b"[")
        for item in events():
            raw.write((b"," if count else b"") + json.dumps(item, ensure_ascii=False).encode())
            count += 1
        raw.write(b"]")
    with zf.open("access-log.csv", "w") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        out = csv.writer(text)
        out.writerow(_ACCESS_COLUMNS)
        for item in events():
            out.writerow([item[c] for c in _ACCESS_COLUMNS])
        text.flush()
        text.detach()
    return count


# ----------------------------------------------------------------------------------------------------------- texts
def _readme() -> bytes:
    return """健康数据导出 / Health data export
==================================

这是您在健康档案库中的全部个人数据副本（《个人信息保护法》第四十五条）。本压缩包使用 AES-256 加密
（WinZip AES），请用您创建导出时设置的口令打开：Windows 可用 7-Zip、WinRAR、Bandizip；macOS 可用 Keka、
The Unarchiver；安卓手机的多数文件管理器可直接打开；iPhone 可用“文件”以外的解压应用（如 iZip）。

This is a copy of all your personal data held by the health vault (PIPL art. 45). The archive is AES-256 encrypted
(WinZip AES); open it with the passphrase you chose: 7-Zip, WinRAR, Bandizip (Windows), Keka, The Unarchiver (macOS),
most Android file managers, or an unzip app on iPhone.

Contents / 内容
  manifest.json      every record: id, category, time, type, size, SHA-256, title / 每份记录的清单与校验值
  records/           the record files exactly as stored / 原始文件（与库中存储的一致）
  lab-results.json   extracted lab values (JSON) / 化验结果（JSON）
  lab-results.csv    extracted lab values (CSV, opens in Excel/WPS) / 化验结果（CSV）
  fhir/              HL7 FHIR R4 Bundle of each lab report / 每份化验单的 FHIR R4 数据
  grants.json        the sharing grants you gave / 您给出的授权
  access-log.json    who accessed your data, when, under which grant / 访问记录
  access-log.csv
  summary.pdf        a summary in Chinese / 中文摘要

File names carry no personal data; everything personal is inside the encrypted entries.
文件名不含个人信息；所有个人信息都在加密内容中。
""".encode()


def _summary_pdf(vault: Vault, *, export_id: str, name: str, manifest: list[dict], lab_rows: int, grants: int,
                 accesses: int) -> bytes:
    import pikepdf

    from vault.records import watermark

    by_category: dict[str, int] = {}
    for entry in manifest:
        by_category[entry["category"]] = by_category.get(entry["category"], 0) + 1
    now = vault.clock().astimezone(SHEET_TZ).strftime("%Y-%m-%d %H:%M")
    lines = [("个人健康数据导出摘要", 16), ("", 10),
             (f"姓名：{name}", 11), (f"导出编号：{export_id}", 11), (f"生成时间：{now}（北京时间）", 11),
             (f"记录总数：{len(manifest)}", 11),
             ("按类别：" + "，".join(f"{CATEGORY_NAMES.get(k, k)} {v}" for k, v in sorted(by_category.items())), 11),
             (f"化验报告：{sum(1 for m in manifest if m['has_lab_results'])} 份，共 {lab_rows} 项结果", 11),
             (f"授权记录：{grants} 条；访问记录：{accesses} 条", 11), ("", 10), ("文件清单：", 12)]
    for entry in manifest:
        created = dt.datetime.fromisoformat(entry["created_at"]).astimezone(SHEET_TZ).strftime("%Y-%m-%d")
        title = (entry["title"] or "")[:24]
        lines.append((f"{entry['file']}  {created}  {CATEGORY_NAMES.get(entry['category'], entry['category'])}  "
                      f"{title}  {entry['size_bytes']} 字节  SHA-256 {entry['sha256'][:16]}…", 8))
    lines += [("", 10), ("本压缩包使用 AES-256 加密（WinZip AES），文件名不含个人信息。请妥善保管口令。", 9)]
    pdf = pikepdf.new()
    font = watermark._font(pdf)
    per_page = 60
    for start_at in range(0, len(lines), per_page):
        pdf.add_blank_page(page_size=(595, 842))
        page = pdf.pages[-1]
        ops, y = [], 800.0
        for text, size in lines[start_at:start_at + per_page]:
            if text:
                ops.append(b"BT /F1 %d Tf 1 0 0 1 40 %.1f Tm %s Tj ET" % (size, y, watermark._hex(text)))
            y -= size * 1.5 if size > 8 else 12
        page.obj.Resources = pikepdf.Dictionary(Font=pikepdf.Dictionary(F1=font))
        page.obj.Contents = pdf.make_stream(b"\n".join(ops))
    out = io.BytesIO()
    pdf.save(out)
    return out.getvalue()
