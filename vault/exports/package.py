"""The export package: the bytes of the patient's encrypted ZIP (built for vault/exports/service.py).

Owns writing the package, streamed, one record at a time, so memory stays bounded whatever the number or size of
records: an AES-256 encrypted ZIP (WinZip AES, "WZ_AES", via pyzipper; why a ZIP: see vault/exports/service.py).

Wire format (format "healthvault-export/v1"). ZIP entry names carry no personal data; everything personal is inside
the encrypted entries:
    README.txt           how to open the archive (Chinese and English)
    manifest.json        {"format", "export_id", "created_at", "records": [{index, file, record_id, category, label,
                         created_at, content_type, size_bytes, sha256, title, filename, ocr_status, has_lab_results}],
                         "lab_result_rows", "grants", "access_events", "entries"}
    records/NNNN.ext     the stored files, byte for byte (ext from the content type: .pdf .jpg .png .heic, else .bin),
                         each checked against its SHA-256 as it is copied
    lab-results.json     [{record_index, record_id, report}], one item per lab report
    lab-results.csv      UTF-8 with BOM, columns _LAB_COLUMNS (one row per result)
    fhir/NNNN.json       the FHIR R4 Bundle of each lab report (vault/labs/fhir.py)
    grants.json          the grants the patient gave, each with its signed receipt and the salt that proves its purpose
    access-log.json      who accessed the patient's data (the patient-visible audit actions), staff by name
    access-log.csv       UTF-8 with BOM, columns _ACCESS_COLUMNS
    summary.pdf          a summary in Chinese
Times are ISO 8601 in UTC; the summary shows Beijing time.

Never: takes or keeps the passphrase beyond the ZIP writer; writes anything but the ZIP to `writer` (the service seals
it); audits, gates or records the export's status (the service does, through `progress`); puts personal data in an
entry name.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.models import AuditEvent
from consent.models import Grant
from kms.stream import iter_decrypt
from vault import fields
from vault.access import audit_append
from vault.auditing import trail
from vault.db.models import Account, Patient, Record
from vault.errors import IntegrityFailure, NotFound, VaultError
from vault.labs import fhir
from vault.records import service as records
from vault.records.uploads import blob_aad
from vault.sharing import receipt

if TYPE_CHECKING:
    from vault.runtime import Vault

EXTENSIONS = {"application/pdf": ".pdf", "image/jpeg": ".jpg", "image/png": ".png", "image/heic": ".heic"}
CATEGORY_NAMES = {"lab_report": "检验报告", "exam_report": "检查报告", "medical_record": "病历", "id_document": "证件",
                  "other": "其他"}
SHEET_TZ = dt.timezone(dt.timedelta(hours=8))


class Writer(Protocol):
    """Where the ZIP goes: write-only, need not seek (the service's writer seals what it is given)."""

    def write(self, data: Any) -> int: ...

    def flush(self) -> None: ...


def _when(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat() if moment else None


def write_package(vault: Vault, writer: Writer, *, export_id: str, patient_id: str, record_ids: list[str],
                  passphrase: bytes, progress: Callable[[int], None]) -> dict:
    """Write the encrypted ZIP to `writer`, one record at a time; `progress(done)` is
    called after each record and each later step (the steps the service counts in `total`). Returns the counts the
    build audits ({"records": n})."""
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
            progress(n)
        # 2. lab results (JSON and CSV) and the FHIR Bundle of every report
        lab_rows = _write_labs(vault, zf, manifest, patient_id=patient_id)
        progress(len(record_ids) + 1)
        # 3. grants given and the access log
        grants = _write_grants(vault, zf, patient_id=patient_id)
        accesses = _write_access_log(vault, zf, patient_id=patient_id)
        progress(len(record_ids) + 2)
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
                   "created_at": _when(g.created_at), "revoked_at": _when(g.revoked_at),
                   "receipt": json.loads(g.receipt), "purpose_salt": receipt.open_salt(key, g)}
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
