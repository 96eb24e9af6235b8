"""Upload hygiene: what an uploaded file may carry into the vault.

Owns turning an accepted upload (PDF, JPEG, PNG, HEIC; kind already sniffed) into the copy the vault stores:
- PDF: opened by qpdf (pikepdf) under limits (pages, objects, decompressed bytes per stream and in total) and
  rewritten whole, without JavaScript, OpenAction and additional actions (/AA), launch / URI / submit / import and
  other external actions, embedded files, multimedia, XMP metadata streams and the document-information dictionary.
  Streams keep their original encoding (no re-compression: the rewrite is quick and stays byte-stable).
- JPEG and PNG: cleaned at the segment / chunk level, losslessly: EXIF (GPS, camera, device), XMP, IPTC, comments,
  text chunks, thumbnails and anything after the end-of-image marker are dropped; the pixels stay as they were. A photo
  whose EXIF asks for a rotation is first turned upright (decoded, rotated, re-encoded), then cleaned. A file with
  nothing to remove passes through byte for byte.
- HEIC: decoded (pillow-heif), turned upright, re-encoded without EXIF, XMP, thumbnails or depth images.
Encrypted, malformed or over-limit files are refused with a 422 problem and nothing is stored.

Streams: the cleaners read a seekable source (an upload's encrypted spool through kms.stream.RandomAccessReader) and
emit the stored copy in pieces, so memory stays bounded whatever the file size: qpdf's object table and one stream
at a time for a PDF, one chunk for JPEG/PNG (plus the decoded pixels, bounded by `max_pixels`, when a photo must be
turned upright), the file and its pixels for HEIC.
Never: writes plaintext anywhere; trusts a length, offset or count read from the file without a bounds check;
decompresses a stream past its limit (Flate is inflated in bounded steps, other filters only when their worst-case
expansion fits).
"""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib
from collections.abc import Callable
from typing import BinaryIO, cast

from vault.errors import VaultError
from vault.records import sniff


class UnsafeFile(VaultError):
    """Base of the hygiene refusals (all 422: the request was understood, the file cannot be taken)."""

    status = 422
    slug = "unsafe-file"
    title = "The file cannot be accepted"


class EncryptedFile(UnsafeFile):
    slug = "encrypted-file"
    title = "Password-protected or encrypted files cannot be stored; remove the protection and upload again"


class MalformedFile(UnsafeFile):
    slug = "malformed-file"
    title = "The file is damaged or not a valid file of its kind"


class FileTooComplex(UnsafeFile):
    slug = "file-too-complex"
    title = "The file exceeds a processing limit (pages, objects, pixels or decompressed size)"


@dataclasses.dataclass(frozen=True)
class Limits:
    max_pages: int = 2000
    max_objects: int = 500_000
    max_stream_bytes: int = 256 * 1024 * 1024  # one decompressed stream
    max_decompressed_bytes: int = 1024 * 1024 * 1024  # all streams together
    max_pixels: int = 64_000_000  # an image (or a HEIC's decoded frame): decoding one needs ~3 bytes a pixel


DEFAULT_LIMITS = Limits()


def clean_stream(src: BinaryIO, emit: Callable[[bytes], None], *, kind: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Write the stored copy of an upload of `kind` (a sniffed media type) read from the seekable `src` to `emit`, in
    pieces; raises an UnsafeFile subclass (the caller discards whatever was emitted)."""
    cleaner = {sniff.PDF: clean_pdf_stream, sniff.JPEG: clean_jpeg_stream, sniff.PNG: clean_png_stream,
               sniff.HEIC: clean_heic_stream}.get(kind)
    if cleaner is None:
        raise MalformedFile()
    cleaner(src, emit, limits)


def clean(data: bytes, *, kind: str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The stored copy of `data` (in memory: for tests and small inputs; uploads use `clean_stream`)."""
    out: list[bytes] = []
    clean_stream(io.BytesIO(data), out.append, kind=kind, limits=limits)
    cleaned = b"".join(out)
    return data if cleaned == data else cleaned


# ---------------------------------------------------------------------------------------------------------------- PDF
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


class _Sink(io.RawIOBase):
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
    out: list[bytes] = []
    clean_pdf_stream(io.BytesIO(data), out.append, limits)
    return b"".join(out)


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
            pdf.save(cast(BinaryIO, _Sink(emit)), deterministic_id=True, fix_metadata_version=False,
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


# ------------------------------------------------------------------------------------------------------ image streams
class _In:
    """Sequential reads from a file-like source with a small look-ahead buffer (no length is trusted)."""

    def __init__(self, src: BinaryIO) -> None:
        self.src = src
        self.buf = bytearray()
        self.eof = False

    def more(self) -> bool:
        if self.eof:
            return False
        chunk = self.src.read(_CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.more():
                raise MalformedFile("The image ends early")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def at_end(self) -> bool:
        return not self.buf and not self.more()


class _Header:
    """What is kept before the image data starts, held until we know whether the image must be turned upright."""

    def __init__(self, limit: int = 16 * 1024 * 1024) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit

    def add(self, part: bytes) -> None:
        self.size += len(part)
        if self.size > self.limit:
            raise FileTooComplex("The image's header is too large", extra={"limit": "header"})
        self.parts.append(part)


class _Rotate(Exception):
    """The image asks for a rotation: start again through the decoder."""


_CHUNK = 1024 * 1024
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def _keep_jpeg_segment(marker: int, payload: bytes) -> bool:
    if marker == 0xE0:
        return payload.startswith(b"JFIF\0")
    if marker == 0xE2:
        return payload.startswith(b"ICC_PROFILE\0")
    if marker == 0xEE:
        return payload.startswith(b"Adobe")
    return not (0xE0 <= marker <= 0xEF or marker == 0xFE)


def _entropy(inp: _In, emit: Callable[[bytes], None]) -> None:
    """Copy entropy-coded data up to (not including) the next real marker."""
    buf, pos = inp.buf, 0
    while True:
        i = buf.find(b"\xff", pos)
        if i < 0 or i + 1 >= len(buf):
            cut = i if i >= 0 else len(buf)
            emit(bytes(buf[:cut]))
            del buf[:cut]
            pos = 0
            if not inp.more():
                raise MalformedFile("The image ends before its end marker")
            continue
        follower = buf[i + 1]
        if follower == 0x00 or 0xD0 <= follower <= 0xD7:
            pos = i + 2
            continue
        if follower == 0xFF:
            pos = i + 1
            continue
        emit(bytes(buf[:i]))
        del buf[:i]
        return


def _strip_jpeg(src: BinaryIO, emit: Callable[[bytes], None], limits: Limits, *, allow_rotation: bool) -> None:
    """Copy a JPEG's image segments and data to `emit`; raises _Rotate (before emitting anything) when its EXIF
    asks for a rotation and `allow_rotation` is set."""
    inp = _In(src)
    if inp.take(2) != b"\xff\xd8":
        raise MalformedFile()
    header = _Header()
    header.add(b"\xff\xd8")
    orientation, frame, in_scan = 1, False, False
    out: Callable[[bytes], None] = header.add
    while True:
        if in_scan:
            _entropy(inp, out)
        if inp.take(1) != b"\xff":
            raise MalformedFile()
        marker = inp.take(1)[0]
        while marker == 0xFF:  # fill bytes
            marker = inp.take(1)[0]
        if marker == 0xD9:
            if not in_scan:
                raise MalformedFile()
            out(b"\xff\xd9")
            return  # anything after the end marker is dropped
        if marker in _STANDALONE:
            out(bytes((0xFF, marker)))
            continue
        length_bytes = inp.take(2)
        length = struct.unpack(">H", length_bytes)[0]
        if length < 2:
            raise MalformedFile()
        payload = inp.take(length - 2)
        if marker == 0xE1 and payload.startswith(b"Exif\0\0") and orientation == 1:
            orientation = _exif_orientation(payload[6:])
        if marker in _SOF:
            if len(payload) < 6:
                raise MalformedFile()
            height, width = struct.unpack(">HH", payload[1:5])
            if height * width > limits.max_pixels:
                raise FileTooComplex("The image has too many pixels", extra={"limit": "pixels"})
            frame = True
        if marker == 0xDA:
            if not frame:
                raise MalformedFile()
            if not in_scan:
                if orientation != 1 and allow_rotation:
                    raise _Rotate()
                for part in header.parts:
                    emit(part)
                out = emit
            in_scan = True
        if _keep_jpeg_segment(marker, payload):
            out(b"\xff" + bytes((marker,)) + length_bytes + payload)


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block; 1 when absent or unreadable."""
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        ifd = struct.unpack(order + "I", tiff[4:8])[0]
        count = struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]
        for i in range(min(count, 512)):
            entry = tiff[ifd + 2 + 12 * i: ifd + 14 + 12 * i]
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag == 0x0112 and kind == 3:
                value = struct.unpack(order + "H", entry[8:10])[0]
                return value if 1 <= value <= 8 else 1
    except (KeyError, struct.error, IndexError):
        return 1
    return 1


def _upright(src: BinaryIO, fmt: str, limits: Limits) -> bytes:
    """Decode, apply the EXIF orientation, re-encode without metadata (cleaned again by the caller). Memory: the
    decoded pixels, bounded by `max_pixels`."""
    from PIL import Image, ImageOps

    src.seek(0)
    try:
        with Image.open(src) as image:
            if image.width * image.height > limits.max_pixels:
                raise FileTooComplex("The image has too many pixels", extra={"limit": "pixels"})
            upright = ImageOps.exif_transpose(image)
            icc = image.info.get("icc_profile")
            out = io.BytesIO()
            options = {"icc_profile": icc} if icc else {}
            if fmt == "JPEG":
                upright.save(out, "JPEG", quality=95, **options)
            else:
                upright.save(out, fmt, **options)
            return out.getvalue()
    except UnsafeFile:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MalformedFile() from exc


def clean_jpeg_stream(src: BinaryIO, emit: Callable[[bytes], None], limits: Limits = DEFAULT_LIMITS) -> None:
    try:
        _strip_jpeg(src, emit, limits, allow_rotation=True)
    except _Rotate:
        _strip_jpeg(io.BytesIO(_upright(src, "JPEG", limits)), emit, limits, allow_rotation=False)


def clean_jpeg(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    out: list[bytes] = []
    clean_jpeg_stream(io.BytesIO(data), out.append, limits)
    cleaned = b"".join(out)
    return data if cleaned == data else cleaned


# ---------------------------------------------------------------------------------------------------------------- PNG
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Rendering chunks kept; every other ancillary chunk (tEXt, zTXt, iTXt, eXIf, tIME, private chunks) is dropped.
_PNG_KEEP = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs",
             b"bKGD", b"hIST", b"acTL", b"fcTL", b"fdAT", b"cICP", b"mDCv", b"cLLi"}
_MAX_EXIF = 1024 * 1024


def _strip_png(src: BinaryIO, emit: Callable[[bytes], None], limits: Limits, *, allow_rotation: bool) -> None:
    """Copy a PNG's rendering chunks (CRC-checked, streamed in pieces) to `emit`. An eXIf orientation seen before the
    image data raises _Rotate (nothing emitted yet); one after it cannot be honoured any more and is dropped."""
    inp = _In(src)
    if inp.take(8) != _PNG_SIGNATURE:
        raise MalformedFile()
    header = _Header()
    header.add(_PNG_SIGNATURE)
    out: Callable[[bytes], None] = header.add
    first, holding = True, True
    while True:
        head = inp.take(8)
        length, kind = struct.unpack(">I4s", head)
        if length > 0x7FFFFFFF or not kind.isalpha():
            raise MalformedFile()
        if first and (kind != b"IHDR" or length != 13):
            raise MalformedFile()
        keep = kind in _PNG_KEEP
        if not keep and kind[:1].isupper():
            raise MalformedFile("The PNG has an unknown critical chunk")
        if kind in (b"IDAT", b"IEND") and holding:
            for part in header.parts:
                emit(part)
            out, holding = emit, False
        crc = zlib.crc32(kind)
        body = bytearray() if (first or kind == b"eXIf") else None
        if kind == b"eXIf" and length > _MAX_EXIF:
            raise FileTooComplex("The PNG's EXIF block is too large", extra={"limit": "header"})
        if keep:
            out(head)
        remaining = length
        while remaining:
            piece = inp.take(min(remaining, _CHUNK))
            remaining -= len(piece)
            crc = zlib.crc32(piece, crc)
            if keep:
                out(piece)
            if body is not None:
                body += piece
        trailer = inp.take(4)
        if struct.unpack(">I", trailer)[0] != crc:
            raise MalformedFile("A PNG chunk fails its checksum")
        if keep:
            out(trailer)
        if first and body is not None:
            width, height = struct.unpack(">II", bytes(body[:8]))
            if width * height > limits.max_pixels:
                raise FileTooComplex("The image has too many pixels", extra={"limit": "pixels"})
            first = False
        if kind == b"eXIf" and body is not None and holding and allow_rotation and _exif_orientation(bytes(body)) != 1:
            raise _Rotate()
        if kind == b"IEND":
            return  # anything after the end chunk is dropped


def clean_png_stream(src: BinaryIO, emit: Callable[[bytes], None], limits: Limits = DEFAULT_LIMITS) -> None:
    try:
        _strip_png(src, emit, limits, allow_rotation=True)
    except _Rotate:
        _strip_png(io.BytesIO(_upright(src, "PNG", limits)), emit, limits, allow_rotation=False)


def clean_png(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    out: list[bytes] = []
    clean_png_stream(io.BytesIO(data), out.append, limits)
    cleaned = b"".join(out)
    return data if cleaned == data else cleaned


# --------------------------------------------------------------------------------------------------------------- HEIC
def clean_heic_stream(src: BinaryIO, emit: Callable[[bytes], None], limits: Limits = DEFAULT_LIMITS) -> None:
    """Decoded, turned upright and re-encoded: HEIF keeps EXIF, XMP and depth maps in items a byte-level strip
    cannot safely reach. Memory: the file and its decoded pixels (bounded by `max_pixels`)."""
    try:
        import pillow_heif
        from PIL import Image, ImageOps
    except ImportError as exc:  # pragma: no cover - pillow-heif is a dependency
        raise MalformedFile("HEIC images cannot be read on this server") from exc
    pillow_heif.register_heif_opener()
    try:
        with Image.open(src) as image:
            if image.width * image.height > limits.max_pixels:
                raise FileTooComplex("The image has too many pixels", extra={"limit": "pixels"})
            upright = ImageOps.exif_transpose(image)
            out = io.BytesIO()
            upright.save(out, "HEIF", quality=90, exif=None, xmp=None, save_all=False)
    except UnsafeFile:
        raise
    except (OSError, ValueError, SyntaxError, RuntimeError, Image.DecompressionBombError) as exc:
        raise MalformedFile() from exc
    emit(out.getvalue())


def clean_heic(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    out: list[bytes] = []
    clean_heic_stream(io.BytesIO(data), out.append, limits)
    return b"".join(out)
