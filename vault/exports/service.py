"""The patient's copy of their own data (PIPL 45: access, copy, portability; COMPLIANCE PIPL-6).

Owns the export requests and their bookkeeping: `start` (audited `export.create`; the build runs on a thread of this
process, because the passphrase must never be stored or queued; `start_reauthenticated`, the console's, asks for the
password again first), the build job (`_build`: status, progress, sealing the ZIP at rest, the `export.build` audit
event; the ZIP's contents are written by vault/exports/package.py, streamed, one record at a time, so memory stays
bounded whatever the number or size of records), `get` (status and progress, `export.read`) and `open_download`
(`export.download`: served once, within 24 hours of being built, then deleted).

The package is an AES-256 encrypted ZIP (WinZip AES, "WZ_AES", via pyzipper). Why a ZIP and not an AES-256 PDF
portfolio: 7-Zip, WinRAR, Bandizip, PeaZip and the file managers of most Android phones (and iOS through common
apps) open AES ZIPs with a password, and a ZIP can hold the record files unchanged (PDF, JPEG, PNG, HEIC) next to
machine-readable JSON, CSV and FHIR; a PDF portfolio needs a full PDF reader that supports attachments and AES-256
(R6) encryption, which most phone viewers lack. ZIP entry names are not encrypted, so they carry no personal data
(`records/0001.pdf`, `fhir/0001.json`, ...); everything personal is inside the encrypted entries. At rest the finished
ZIP is sealed again under a per-export DEK (wrapped by the patient KEK: erasure shreds it).

Contents (the wire format is stated in vault/exports/package.py): README.txt, manifest.json (every record: index,
id, category, time, type, size, SHA-256, title), records/NNNN.ext (the stored files, byte for byte), lab-results.json
and lab-results.csv, fhir/NNNN.json (the FHIR R4 Bundle of every lab report, vault/labs/fhir.py), grants.json (the
grants the patient gave), access-log.json and access-log.csv (who accessed the patient's data), summary.pdf (a
summary in Chinese).

Never: stores, logs or queues the passphrase (it lives in this process's memory for the build only and is then
overwritten); lets anyone but the patient start, see or download an export; serves a package twice or after 24 h.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from kms import CryptoError, envelope
from kms.stream import StreamEncryptor, iter_decrypt
from vault.access import gate
from vault.accounts import service as accounts
from vault.db.models import PatientExport, Record
from vault.errors import Conflict, IntegrityFailure, InvalidInput, NotFound, VaultError
from vault.exports import package
from vault.identity import Identity, RequestContext

if TYPE_CHECKING:
    from vault.runtime import Vault

log = logging.getLogger("healthvault.exports")
TTL = dt.timedelta(hours=24)
STALE_AFTER = dt.timedelta(minutes=10)
MIN_PASSPHRASE = 12
MAX_PASSPHRASE = 256
SYSTEM = Identity(account_id="system:export", role="system")
ACTIVE = ("queued", "running")


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
        raise Conflict("An export is already being built", extra={"export_status": "running"})
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


def start_reauthenticated(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, passphrase: str,
                          password: str, otp: str | None) -> ExportView:
    """`start`, after the password (and the TOTP code, if enrolled) again, as erasure asks: the console's way, since
    the package holds everything the vault knows about the patient. The passphrase is judged first (a weak one costs
    no sign-in attempt); a failed re-authentication is audited as a denied `export.create` and nothing is built."""
    check_passphrase(passphrase)
    accounts.reauthenticate(session, vault, identity=identity, ctx=ctx, password=password, otp=otp,
                            action="export.create", target=gate.Target("export", None, identity.patient_id or ""))
    return start(session, vault, identity=identity, ctx=ctx, passphrase=passphrase)


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
        raise Conflict("The export is not ready", extra={"export_status": row.status})
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
        counts = package.write_package(vault, writer, export_id=export_id, patient_id=patient_id,
                                       record_ids=record_ids, passphrase=bytes(passphrase),
                                       progress=lambda done: _progress(vault, export_id, done=done))
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
