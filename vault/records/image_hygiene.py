"""Upload hygiene for images: the copy of an uploaded JPEG, PNG or HEIC that the vault stores.

Owns:
- JPEG and PNG: cleaned at the segment / chunk level, losslessly: EXIF (GPS, camera, device), XMP, IPTC, comments,
  text chunks, thumbnails and anything after the end-of-image marker are dropped; the pixels stay as they were. A photo
  whose EXIF asks for a rotation is first turned upright (decoded, rotated, re-encoded), then cleaned. A file with
  nothing to remove passes through byte for byte.
- HEIC: decoded (pillow-heif), turned upright, re-encoded without EXIF, XMP, thumbnails or depth images.
Entry points and refusals are in vault/records/hygiene.py (`clean_stream` dispatches here by kind).

Streams: reads a seekable source sequentially and emits in pieces: one chunk for JPEG/PNG (plus the decoded pixels,
bounded by `max_pixels`, when a photo must be turned upright), the file and its pixels for HEIC.
Never: writes plaintext anywhere; trusts a length, offset or count read from the file without a bounds check; decodes
an image over `max_pixels`.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import BinaryIO

from vault.records import hygiene, sniff
from vault.records.hygiene import DEFAULT_LIMITS, FileTooComplex, Limits, MalformedFile, UnsafeFile


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


def _clean_stream(strip: Callable[..., None], fmt: str, src: BinaryIO, emit: Callable[[bytes], None],
                  limits: Limits) -> None:
    """Strip `src` chunk by chunk; a picture that must be turned upright first is re-encoded, then stripped."""
    try:
        strip(src, emit, limits, allow_rotation=True)
    except _Rotate:
        strip(io.BytesIO(_upright(src, fmt, limits)), emit, limits, allow_rotation=False)


def clean_jpeg_stream(src: BinaryIO, emit: Callable[[bytes], None], limits: Limits = DEFAULT_LIMITS) -> None:
    _clean_stream(_strip_jpeg, "JPEG", src, emit, limits)


def clean_jpeg(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    return hygiene.clean(data, kind=sniff.JPEG, limits=limits)


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
    _clean_stream(_strip_png, "PNG", src, emit, limits)


def clean_png(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    return hygiene.clean(data, kind=sniff.PNG, limits=limits)


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
    return hygiene.clean(data, kind=sniff.HEIC, limits=limits)
