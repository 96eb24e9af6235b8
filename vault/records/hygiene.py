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

Never: writes plaintext anywhere (the caller holds the bytes in memory, bounded by `max_bytes`, and encrypts the
result); trusts a length, offset or count read from the file without a bounds check; decompresses a stream past its
limit (Flate is inflated in bounded steps, other filters only when their worst-case expansion fits).
"""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib

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
    max_pixels: int = 100_000_000  # an image (or a HEIC's decoded frame)


DEFAULT_LIMITS = Limits()


def clean(data: bytes, *, kind: str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The stored copy of an upload of `kind` (a sniffed media type); raises an UnsafeFile subclass."""
    if kind == sniff.PDF:
        return clean_pdf(data, limits)
    if kind == sniff.JPEG:
        return clean_jpeg(data, limits)
    if kind == sniff.PNG:
        return clean_png(data, limits)
    if kind == sniff.HEIC:
        return clean_heic(data, limits)
    raise MalformedFile()


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


def clean_pdf(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    import pikepdf

    try:
        pdf = pikepdf.open(io.BytesIO(data))
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
            out = io.BytesIO()
            pdf.save(out, deterministic_id=True, fix_metadata_version=False, compress_streams=False,
                     stream_decode_level=pikepdf.StreamDecodeLevel.none)
        except UnsafeFile:
            raise
        except (pikepdf.PdfError, ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
            raise MalformedFile() from exc
    return out.getvalue()


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


# --------------------------------------------------------------------------------------------------------------- JPEG
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


def _strip_jpeg(data: bytes, limits: Limits) -> tuple[bytes, int]:
    """(cleaned bytes, EXIF orientation) of a JPEG; MalformedFile if its structure does not hold."""
    n = len(data)
    if not data.startswith(b"\xff\xd8"):
        raise MalformedFile()
    out = [b"\xff\xd8"]
    pos, orientation, frame, in_scan = 2, 1, False, False
    while True:
        if in_scan:  # entropy-coded data: copy up to the next real marker
            start = pos
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= n:
                    raise MalformedFile("The image ends before its end marker")
                follower = data[pos + 1]
                if follower == 0x00 or 0xD0 <= follower <= 0xD7:
                    pos += 2
                    continue
                if follower == 0xFF:
                    pos += 1
                    continue
                break
            out.append(data[start:pos])
        if pos >= n or data[pos] != 0xFF:
            raise MalformedFile()
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            raise MalformedFile()
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            if not in_scan or not frame:
                raise MalformedFile()
            out.append(b"\xff\xd9")
            return b"".join(out), orientation  # anything after the end marker is dropped
        if marker in _STANDALONE:
            out.append(bytes((0xFF, marker)))
            continue
        if pos + 2 > n:
            raise MalformedFile()
        length = struct.unpack(">H", data[pos:pos + 2])[0]
        if length < 2 or pos + length > n:
            raise MalformedFile()
        payload = data[pos + 2:pos + length]
        segment = data[pos - 2:pos + length] if data[pos - 2] == 0xFF else b"\xff" + bytes((marker,)) + \
            data[pos:pos + length]
        pos += length
        if marker == 0xE1 and payload.startswith(b"Exif\0\0"):
            orientation = _exif_orientation(payload[6:]) if orientation == 1 else orientation
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
            in_scan = True
        if _keep_jpeg_segment(marker, payload):
            out.append(segment)


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


def _upright(data: bytes, fmt: str, limits: Limits) -> bytes:
    """Decode, apply the EXIF orientation, re-encode without metadata (then cleaned again by the caller)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > limits.max_pixels:
                raise FileTooComplex("The image has too many pixels", extra={"limit": "pixels"})
            upright = ImageOps.exif_transpose(image)
            icc = image.info.get("icc_profile")
            out = io.BytesIO()
            options = {"icc_profile": icc} if icc else {}
            if fmt == "JPEG":
                upright.save(out, "JPEG", quality=95, subsampling="keep" if upright is image else 0, **options)
            else:
                upright.save(out, fmt, **options)
            return out.getvalue()
    except UnsafeFile:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MalformedFile() from exc


def clean_jpeg(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    cleaned, orientation = _strip_jpeg(data, limits)
    if orientation != 1:
        cleaned, _ = _strip_jpeg(_upright(data, "JPEG", limits), limits)
    return data if cleaned == data else cleaned


# ---------------------------------------------------------------------------------------------------------------- PNG
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Rendering chunks kept; every other ancillary chunk (tEXt, zTXt, iTXt, eXIf, tIME, private chunks) is dropped.
_PNG_KEEP = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs",
             b"bKGD", b"hIST", b"acTL", b"fcTL", b"fdAT", b"cICP", b"mDCv", b"cLLi"}


def _strip_png(data: bytes, limits: Limits) -> tuple[bytes, int]:
    if not data.startswith(_PNG_SIGNATURE):
        raise MalformedFile()
    out = [_PNG_SIGNATURE]
    pos, orientation, n, first = 8, 1, len(data), True
    while True:
        if pos + 12 > n:
            raise MalformedFile("The image ends before its end chunk")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > n or not kind.isalpha():
            raise MalformedFile()
        body = data[pos + 8:pos + 8 + length]
        if struct.unpack(">I", data[end - 4:end])[0] != zlib.crc32(kind + body):
            raise MalformedFile("A PNG chunk fails its checksum")
        if first:
            if kind != b"IHDR" or length != 13:
                raise MalformedFile()
            width, height = struct.unpack(">II", body[:8])
            if width * height > limits.max_pixels:
                raise FileTooComplex("The image has too many pixels", extra={"limit": "pixels"})
            first = False
        if kind == b"eXIf":
            orientation = _exif_orientation(body)
        if kind in _PNG_KEEP:
            out.append(data[pos:end])
        elif kind[:1].isupper():
            raise MalformedFile("The PNG has an unknown critical chunk")
        pos = end
        if kind == b"IEND":
            return b"".join(out), orientation


def clean_png(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    cleaned, orientation = _strip_png(data, limits)
    if orientation != 1:
        cleaned, _ = _strip_png(_upright(data, "PNG", limits), limits)
    return data if cleaned == data else cleaned


# --------------------------------------------------------------------------------------------------------------- HEIC
def clean_heic(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Decoded, turned upright and re-encoded: HEIF keeps EXIF, XMP and depth maps in items a byte-level strip
    cannot safely reach."""
    try:
        import pillow_heif
        from PIL import Image, ImageOps
    except ImportError as exc:  # pragma: no cover - pillow-heif is a dependency
        raise MalformedFile("HEIC images cannot be read on this server") from exc
    pillow_heif.register_heif_opener()
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > limits.max_pixels:
                raise FileTooComplex("The image has too many pixels", extra={"limit": "pixels"})
            upright = ImageOps.exif_transpose(image)
            out = io.BytesIO()
            upright.save(out, "HEIF", quality=90, exif=None, xmp=None, save_all=False)
            return out.getvalue()
    except UnsafeFile:
        raise
    except (OSError, ValueError, SyntaxError, RuntimeError, Image.DecompressionBombError) as exc:
        raise MalformedFile() from exc
