"""Traceable downloads for grantees (CONF-1, download side): what a doctor or escort takes away is marked.

Owns the grantee's download of a record: the gate's decision (`record.download`, within a grant or a break-glass
claim), one audit event that carries a fresh per-download id (`reason` = "<source> download:<id>", with the grant id
in its own column), and the marked copy: every page of a PDF (an image is first placed on a PDF page) gets a visible
watermark — grantee, time, grant id, purpose, 仅供诊疗使用, the download id — as real text (it survives text
extraction), and the download id goes into the document information dictionary (`/HealthVaultDownload`).
`healthvault audit trace FILE` (vault/cli/trace.py) reads the id back and finds the event.
The patient's own downloads never come here: they stay byte-identical to what was stored (records.open_content).

Never: writes the patient's name or any record content into the mark; marks a copy before its audit event is
committed; leaves an unmarked copy to a grantee (a file that cannot be marked is refused, not sent plain).
Fonts: the mark's Chinese uses the non-embedded Adobe-GB1 `STSong-Light` CID font (UniGB-UCS2-H) with a ToUnicode
map, as many Chinese LIS exports do: readers substitute a system CJK font, and text extraction needs no font at all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import re
import secrets
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from consent.models import Grant
from kms import CryptoError, DataKey
from kms.stream import StreamEncryptor, iter_decrypt
from kms.stream_reader import RandomAccessReader
from vault import fields
from vault.access import gate
from vault.db.models import Account, Patient
from vault.errors import IntegrityFailure, NotFound, VaultError
from vault.identity import Identity, RequestContext
from vault.records import service as records
from vault.records.pdf_hygiene import EmitWriter
from vault.records.uploads import blob_aad

if TYPE_CHECKING:
    from vault.runtime import Vault

INFO_KEY = "/HealthVaultDownload"
REASON_PREFIX = "download:"
DOWNLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
NOTICE = "仅供诊疗使用"
SHEET_TZ = dt.timezone(dt.timedelta(hours=8))
MAX_PURPOSE_SHOWN = 40


class CannotMark(VaultError):
    slug = "cannot-watermark"
    status = 422
    title = "This file cannot be watermarked for a grantee download"


@dataclasses.dataclass(frozen=True)
class Mark:
    grantee: str
    at: dt.datetime
    grant_id: str
    purpose: str
    download_id: str

    def lines(self) -> list[str]:
        when = self.at.astimezone(SHEET_TZ).strftime("%Y-%m-%d %H:%M:%S")
        purpose = self.purpose if len(self.purpose) <= MAX_PURPOSE_SHOWN else self.purpose[:MAX_PURPOSE_SHOWN] + "…"
        return [f"{NOTICE}  接收方 {self.grantee}  下载时间 {when} (UTC+8)",
                f"授权 {self.grant_id}  用途 {purpose}",
                f"下载编号 {self.download_id}"]


# ------------------------------------------------------------------------------------------------------------ the mark
def _hex(text: str) -> bytes:
    safe = "".join(c if ord(c) <= 0xFFFF and c.isprintable() else "?" for c in text)
    return b"<" + safe.encode("utf-16-be").hex().upper().encode() + b">"


def _tounicode() -> bytes:
    """Identity ToUnicode CMap for UCS-2 codes (bfrange blocks of at most 100 entries, none across a high byte)."""
    ranges = [b"<%02X00> <%02XFF> <%02X00>" % (hi, hi, hi) for hi in range(256) if not 0xD8 <= hi <= 0xDF]
    blocks = []
    for i in range(0, len(ranges), 100):
        chunk = ranges[i:i + 100]
        blocks.append(b"%d beginbfrange\n" % len(chunk) + b"\n".join(chunk) + b"\nendbfrange")
    return (b"/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
            b"/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
            b"/CMapName /HV-UCS2-Identity def\n/CMapType 2 def\n1 begincodespacerange\n<0000> <FFFF>\n"
            b"endcodespacerange\n" + b"\n".join(blocks) + b"\nendcmap\nCMapName currentdict /CMap defineresource pop\n"
            b"end\nend\n")


def _font(pdf):
    import pikepdf

    descriptor = pikepdf.Dictionary(Type=pikepdf.Name.FontDescriptor, FontName=pikepdf.Name("/STSong-Light"),
                                    Flags=6, FontBBox=[-25, -254, 1000, 880], ItalicAngle=0, Ascent=880,
                                    Descent=-120, CapHeight=880, StemV=93)
    cid = pikepdf.Dictionary(Type=pikepdf.Name.Font, Subtype=pikepdf.Name.CIDFontType0,
                             BaseFont=pikepdf.Name("/STSong-Light"),
                             CIDSystemInfo=pikepdf.Dictionary(Registry=pikepdf.String("Adobe"),
                                                              Ordering=pikepdf.String("GB1"), Supplement=4),
                             FontDescriptor=pdf.make_indirect(descriptor), DW=1000, W=[1, 95, 500])
    return pdf.make_indirect(pikepdf.Dictionary(
        Type=pikepdf.Name.Font, Subtype=pikepdf.Name.Type0, BaseFont=pikepdf.Name("/STSong-Light"),
        Encoding=pikepdf.Name("/UniGB-UCS2-H"), DescendantFonts=[pdf.make_indirect(cid)],
        ToUnicode=pdf.make_indirect(pikepdf.Stream(pdf, _tounicode()))))


def _stamp(width: float, height: float, mark: Mark):
    """A one-page PDF of the page's size holding the mark: a footer block and a diagonal tile of the notice."""
    import pikepdf

    stamp = pikepdf.new()
    stamp.add_blank_page(page_size=(width, height))
    page = stamp.pages[0]
    size = max(6.0, min(9.0, width / 70))
    ops = [b"q /GSfoot gs 0.55 0.05 0.05 rg 1 1 1 RG"]
    lines = mark.lines()
    for i, line in enumerate(lines):
        y = 8 + size * 1.25 * (len(lines) - 1 - i)
        ops.append(b"BT /HV %.2f Tf 1 0 0 1 %.2f %.2f Tm %s Tj ET" % (size, 12.0, y, _hex(line)))
    ops.append(b"Q q /GStile gs 0.6 0.1 0.1 rg")
    tile = _hex(f"{NOTICE} · {mark.grantee} · {mark.download_id[:8]}")
    big = max(12.0, min(28.0, width / 22))
    step_y = big * 9
    y = step_y / 2
    while y < height + step_y:
        for x in (width * 0.08, width * 0.58):
            ops.append(b"BT /HV %.2f Tf 0.7071 0.7071 -0.7071 0.7071 %.2f %.2f Tm %s Tj ET" % (big, x, y, tile))
        y += step_y
    ops.append(b"Q")
    page.obj.Contents = stamp.make_stream(b"\n".join(ops))
    page.obj.Resources = pikepdf.Dictionary(
        Font=pikepdf.Dictionary(HV=_font(stamp)),
        ExtGState=pikepdf.Dictionary(GSfoot=pikepdf.Dictionary(Type=pikepdf.Name.ExtGState, ca=0.85, CA=0.85),
                                     GStile=pikepdf.Dictionary(Type=pikepdf.Name.ExtGState, ca=0.18, CA=0.18)))
    return stamp


def mark_pdf(data: bytes, mark: Mark) -> bytes:
    """Every page of `data` with the mark on top; the download id in the document information."""
    out: list[bytes] = []
    mark_pdf_stream(io.BytesIO(data), out.append, mark)
    return b"".join(out)


def mark_pdf_stream(src: BinaryIO, emit: Callable[[bytes], None], mark: Mark) -> None:
    """`mark_pdf` from a seekable source (read as qpdf needs it) to `emit`, in pieces."""
    import pikepdf

    try:
        pdf = pikepdf.open(src)
    except (pikepdf.PdfError, pikepdf.PasswordError, ValueError) as exc:
        raise CannotMark() from exc
    stamps: dict[tuple[int, int], pikepdf.Pdf] = {}
    try:
        with pdf:
            for page in pdf.pages:
                box = page.trimbox
                width, height = float(box[2]) - float(box[0]), float(box[3]) - float(box[1])
                key = (round(width), round(height))
                if key not in stamps:
                    stamps[key] = _stamp(max(width, 36.0), max(height, 36.0), mark)
                page.add_overlay(stamps[key].pages[0], pikepdf.Rectangle(*[float(v) for v in box]))
            pdf.docinfo[INFO_KEY] = mark.download_id
            pdf.save(cast(BinaryIO, EmitWriter(emit)))
    except pikepdf.PdfError as exc:
        raise CannotMark() from exc
    finally:
        for stamp in stamps.values():
            stamp.close()


def image_to_pdf(data: bytes) -> bytes:
    """One A4-wide page holding the image: a JPEG is embedded as it is (no re-encoding), others losslessly."""
    import zlib

    import pikepdf
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "HEIF" or image.format is None:
                raise OSError("not embedded directly")
            width, height, fmt, mode = image.width, image.height, image.format, image.mode
            if fmt == "JPEG" and mode in ("L", "RGB"):
                raw, filters = data, pikepdf.Name.DCTDecode
                colour = pikepdf.Name.DeviceGray if mode == "L" else pikepdf.Name.DeviceRGB
            else:
                converted = image.convert("L" if mode in ("1", "L", "LA", "I", "I;16") else "RGB")
                raw, filters = zlib.compress(converted.tobytes(), 6), pikepdf.Name.FlateDecode
                colour = pikepdf.Name.DeviceGray if converted.mode == "L" else pikepdf.Name.DeviceRGB
    except OSError:
        raw, width, height, filters, colour = _decoded_heif(data)
    page_width = 595.0
    page_height = max(36.0, page_width * height / width)
    pdf = pikepdf.new()
    xobject = pikepdf.Stream(pdf, raw)
    xobject.Type, xobject.Subtype = pikepdf.Name.XObject, pikepdf.Name.Image
    xobject.Width, xobject.Height, xobject.BitsPerComponent = width, height, 8
    xobject.ColorSpace, xobject.Filter = colour, filters
    pdf.add_blank_page(page_size=(page_width, page_height))
    page = pdf.pages[0]
    page.obj.Resources = pikepdf.Dictionary(XObject=pikepdf.Dictionary(Im0=pdf.make_indirect(xobject)))
    page.obj.Contents = pdf.make_stream(b"q %.4f 0 0 %.4f 0 0 cm /Im0 Do Q" % (page_width, page_height))
    out = io.BytesIO()
    pdf.save(out)
    return out.getvalue()


def _decoded_heif(data: bytes):
    import zlib

    import pikepdf
    from PIL import Image

    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
            return zlib.compress(rgb.tobytes(), 6), rgb.width, rgb.height, pikepdf.Name.FlateDecode, \
                pikepdf.Name.DeviceRGB
    except (ImportError, OSError, ValueError) as exc:
        raise CannotMark() from exc


def mark(data: bytes, content_type: str, mark: Mark) -> bytes:
    """The grantee's copy: a marked PDF whatever the stored kind."""
    pdf = data if content_type == "application/pdf" else image_to_pdf(data)
    return mark_pdf(pdf, mark)


def read_download_id(data: bytes) -> str | None:
    """The download id of a marked copy: from the document information, else from the visible mark's text."""
    import pikepdf

    try:
        with pikepdf.open(io.BytesIO(data)) as pdf:
            value = pdf.docinfo.get(INFO_KEY)
            if value is not None and DOWNLOAD_ID.match(str(value)):
                return str(value)
    except (pikepdf.PdfError, ValueError):
        return None
    try:
        import pypdfium2  # type: ignore[import-untyped]

        document = pypdfium2.PdfDocument(data)
        try:
            for page in document:
                found = re.search(r"下载编号\s*([0-9a-f]{32})", page.get_textpage().get_text_range())
                if found:
                    return found.group(1)
        finally:
            document.close()
    except Exception:  # noqa: BLE001 - a leaked file may be anything; no id is the answer
        return None
    return None


# -------------------------------------------------------------------------------------------------------- the download
@dataclasses.dataclass(frozen=True)
class PendingDownload:
    """An allowed, audited grantee download, not yet decrypted: `render` makes the marked copy (CPU work, run it off
    the event loop)."""

    record_id: str
    patient_id: str
    content_type: str
    dek: DataKey
    mark: Mark

    @property
    def download_id(self) -> str:
        return self.mark.download_id


def _grant_purpose(session: Session, vault: Vault, grant_id: str | None, patient: Patient) -> str:
    grant = session.get(Grant, grant_id) if grant_id else None
    if grant is None:
        return "紧急访问 break-glass"
    dek = vault.keys.open_data_key(patient.id, patient.wrapped_dek)
    return fields.open_text(dek, grant.purpose_enc, table="grants", column="purpose", row_id=grant.id,
                            patient_id=grant.patient_id)


def authorize(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext,
              record_id: str) -> PendingDownload:
    """Gate and audit a grantee's download of one record; NotFound when the gate says no (existence never leaks).
    The audit event is committed, carrying the download id, before anything is decrypted."""
    record, dek, target = records.target_of(session, vault, identity=identity, ctx=ctx, record_id=record_id,
                                            action="record.download")
    decision = gate.enter(vault, session, identity=identity, ctx=ctx, action="record.download", target=target,
                          deny_as=NotFound, audit_allow=False)
    assert record is not None  # the gate refuses (404) a record that does not exist
    download_id = secrets.token_hex(16)
    source = decision.source.partition(":")[0]
    gate.audit(vault, session, identity=identity, ctx=ctx, action="record.download", target=target, outcome="allow",
               reason=f"{source} {REASON_PREFIX}{download_id}", grant_id=decision.grant_id)
    session.commit()
    patient = session.get(Patient, record.patient_id)
    if patient is None or dek is None:
        raise NotFound()
    grantee = session.scalar(select(Account.username).where(Account.id == identity.account_id)) or identity.role
    the_mark = Mark(grantee=grantee, at=vault.clock(), grant_id=decision.grant_id or "-",
                    purpose=_grant_purpose(session, vault, decision.grant_id, patient), download_id=download_id)
    return PendingDownload(record_id=record.id, patient_id=record.patient_id, content_type=record.content_type,
                           dek=dek, mark=the_mark)


def render(vault: Vault, pending: PendingDownload) -> bytes:
    """The marked copy, in memory (for tests and small files; the API streams with `render_stream`)."""
    _size, chunks = render_stream(vault, pending)
    return b"".join(chunks)


def render_stream(vault: Vault, pending: PendingDownload) -> tuple[int, Iterator[bytes]]:
    """(size, chunks) of the marked copy, memory bounded for PDFs whatever their size: qpdf reads the stored blob
    through kms.stream_reader.RandomAccessReader (every segment authenticated) and writes the marked PDF into an
    encrypted spool (an anonymous temporary file under a throw-away data key) that the chunks decrypt as they are
    sent. An image is placed on a page in memory first (bounded by the upload's pixel limit)."""
    aad = blob_aad(record_id=pending.record_id, patient_id=pending.patient_id)
    spool = tempfile.TemporaryFile(dir=getattr(vault.blobs, "tmp_dir", None))
    spool_key, _wrapped = vault.keys.new_data_key(pending.patient_id)
    spool_aad = b"hv/watermark-spool/" + pending.mark.download_id.encode()
    encryptor = StreamEncryptor(spool_key, spool_aad)

    def feed(piece: bytes) -> None:
        spool.write(encryptor.update(piece))

    try:
        with vault.blobs.open(pending.record_id) as source:
            reader = io.BufferedReader(RandomAccessReader(pending.dek, source, aad), 256 * 1024)
            if pending.content_type == "application/pdf":
                mark_pdf_stream(reader, feed, pending.mark)
            else:
                feed(mark_pdf(image_to_pdf(reader.read()), pending.mark))
        spool.write(encryptor.finalize())
    except CryptoError as exc:
        spool.close()
        raise IntegrityFailure() from exc
    except BaseException:
        spool.close()
        raise
    spool.seek(0)

    def chunks() -> Iterator[bytes]:
        try:
            yield from iter_decrypt(spool_key, spool, spool_aad)
        finally:
            spool.close()
            spool_key.wipe()

    return encryptor.plaintext_size, chunks()


def download(session: Session, vault: Vault, *, identity: Identity, ctx: RequestContext, record_id: str) -> bytes:
    """`authorize` then `render`, in one call (for callers already off the event loop)."""
    return render(vault, authorize(session, vault, identity=identity, ctx=ctx, record_id=record_id))
