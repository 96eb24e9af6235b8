"""Upload hygiene for PDFs: the copy of an uploaded PDF that the vault stores.

Owns opening a PDF with qpdf (pikepdf) under limits (pages, objects, decompressed bytes per stream and in total) and
rewriting it whole, without JavaScript, OpenAction and additional actions (/AA), launch / URI / submit / import and
other external actions, embedded files, multimedia, XMP metadata streams and the document-information dictionary.
Streams keep their original encoding (no re-compression: the rewrite is quick and stays byte-stable).
Entry points and refusals are in vault/records/hygiene.py (`clean_stream` dispatches here by kind).

Streams: reads a seekable source as qpdf needs it, never whole; memory is qpdf's object table (bounded by
`max_objects`) and one stream at a time.
Never: writes plaintext anywhere; decompresses a stream past its limit (Flate is inflated in bounded steps, other
filters only when their worst-case expansion fits); lets a pikepdf error escape as anything but a 422 refusal.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from typing import BinaryIO, cast

from vault.records import hygiene, sniff
from vault.records.hygiene import DEFAULT_LIMITS, EncryptedFile, FileTooComplex, Limits, MalformedFile, UnsafeFile

_FLATE = "/FlateDecode"
# Filters qpdf would decode ("generalized") and a safe upper bound of their expansion; image codecs are never decoded
# by the rewrite (their raw length is what counts).
_EXPANSION = {"/ASCIIHexDecode": 1, "/AHx": 1, "/ASCII85Decode": 1, "/A85": 1, "/RunLengthDecode": 128, "/RL": 128,
              "/LZWDecode": 3000, "/LZW": 3000}
_IMAGE_CODECS = {"/DCTDecode", "/DCT", "/JPXDecode", "/JBIG2Decode", "/CCITTFaxDecode", "/CCF"}
# Keys that carry actions, scripts, metadata or application data, removed from every dictionary in the file.
_DROP_KEYS = ("/AA", "/OpenAction", "/JS", "/Metadata", "/PieceInfo", "/EmbeddedFiles", "/XFA", "/URI")
_BAD_ACTIONS = {"/JavaScript", "/Launch", "/URI", "/GoToR", "/GoToE", "/SubmitForm", "/ImportData", "/Rendition",
                "/Movie", "/Sound", "/RichMediaExecute", "/ResetForm", "/Hide", "/SetOCGState", "/Trans", "/GoTo3DView"}


class EmitWriter(io.RawIOBase):
    """A write-only file object over `emit` (what qpdf writes the rewritten PDF to)."""

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        super().__init__()
        self._emit = emit

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._emit(bytes(data))
        return len(data)


def clean_pdf(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    return hygiene.clean(data, kind=sniff.PDF, limits=limits)


def clean_pdf_stream(src: BinaryIO, emit: Callable[[bytes], None], limits: Limits = DEFAULT_LIMITS) -> None:
    """Open `src` (seekable; read as qpdf needs it, never whole) and write the rewritten PDF to `emit`. Memory: qpdf's
    object table (bounded by `max_objects`) and one stream at a time."""
    import pikepdf

    try:
        pdf = pikepdf.open(src)
    except pikepdf.PasswordError as exc:
        raise EncryptedFile() from exc
    except (pikepdf.PdfError, ValueError, OverflowError, RecursionError) as exc:
        raise MalformedFile() from exc
    with pdf:
        try:
            if pdf.is_encrypted:
                raise EncryptedFile()
            if len(pdf.objects) > limits.max_objects:
                raise FileTooComplex("The PDF has too many objects", extra={"limit": "objects"})
            if len(pdf.pages) > limits.max_pages:
                raise FileTooComplex(f"The PDF has more than {limits.max_pages} pages", extra={"limit": "pages"})
            _check_streams(pdf, limits)
            _sanitize(pdf)
            pdf.save(cast(BinaryIO, EmitWriter(emit)), deterministic_id=True, fix_metadata_version=False,
                     compress_streams=False, stream_decode_level=pikepdf.StreamDecodeLevel.none)
        except UnsafeFile:
            raise
        except (pikepdf.PdfError, ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
            raise MalformedFile() from exc


def _filters(stream) -> list[str]:
    import pikepdf

    value = stream.get("/Filter")
    if value is None:
        return []
    if isinstance(value, pikepdf.Name):
        return [str(value)]
    if isinstance(value, pikepdf.Array):
        return [str(v) for v in value]
    raise MalformedFile()


def _inflated_size(raw: bytes, limit: int) -> int:
    """Bytes a Flate stream inflates to, counting in bounded steps; stops past `limit`."""
    inflater = zlib.decompressobj()
    size = 0
    chunk = raw
    try:
        while chunk:
            size += len(inflater.decompress(chunk, 1024 * 1024))
            if size > limit:
                return size
            chunk = inflater.unconsumed_tail
        size += len(inflater.flush())
    except zlib.error:
        return size  # a broken stream is the reader's problem, not a bomb: it inflates to what it holds
    return size


def _check_streams(pdf, limits: Limits) -> None:
    import pikepdf

    total = 0
    for obj in pdf.objects:
        if not isinstance(obj, pikepdf.Stream):
            continue
        filters = _filters(obj)
        raw = obj.read_raw_bytes()
        if not filters or (filters[-1] in _IMAGE_CODECS and len(filters) == 1):
            size = len(raw)
        elif filters[0] == _FLATE and all(f in _IMAGE_CODECS for f in filters[1:]):
            size = _inflated_size(raw, limits.max_stream_bytes)
        else:
            bound = len(raw)
            for name in filters:
                bound *= _EXPANSION.get(name, 1032 if name == _FLATE else 1)
            size = bound if bound <= limits.max_stream_bytes else limits.max_stream_bytes + 1
        if size > limits.max_stream_bytes:
            raise FileTooComplex("A PDF stream decompresses beyond the limit", extra={"limit": "stream-size"})
        total += size
        if total > limits.max_decompressed_bytes:
            raise FileTooComplex("The PDF decompresses beyond the limit", extra={"limit": "decompressed-size"})


def _sanitize(pdf) -> None:
    import pikepdf
    from pikepdf import sanitize

    (sanitize.Sanitizer().remove_javascript().remove_external_access().remove_attachments().remove_multimedia()
     .apply(pdf))
    for obj in list(pdf.objects):
        _scrub(obj, pikepdf)
    root = pdf.Root
    for key in ("/Names", "/AcroForm"):
        if key in root:
            _scrub(root[key], pikepdf, depth=0)
    if "/Info" in pdf.trailer:
        del pdf.trailer["/Info"]


def _scrub(obj, pikepdf, depth: int = 0) -> None:
    """Remove action, script and metadata keys from a dictionary (or stream) and its direct children."""
    if depth > 32:
        return
    if isinstance(obj, (pikepdf.Dictionary, pikepdf.Stream)):
        for key in _DROP_KEYS:
            if key in obj:
                del obj[key]
        action = obj.get("/A")
        if isinstance(action, pikepdf.Dictionary) and str(action.get("/S", "")) in _BAD_ACTIONS:
            del obj["/A"]
        if str(obj.get("/Subtype", "")) == "/FileAttachment":
            for key in ("/FS", "/Contents"):
                if key in obj:
                    del obj[key]
        if obj.get("/Type") == pikepdf.Name.Filespec:
            for key in ("/EF", "/RF"):
                if key in obj:
                    del obj[key]
        children = [obj[k] for k in obj.keys()]
    elif isinstance(obj, pikepdf.Array):
        children = list(obj)
    else:
        return
    for child in children:
        if isinstance(child, pikepdf.Object) and not child.is_indirect:
            _scrub(child, pikepdf, depth + 1)

