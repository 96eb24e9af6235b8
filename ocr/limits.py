"""Resource limits of a PDF before anything renders it: what inputs.py's page-level image check does not see.

Owns three checks on an open pikepdf document, each raising ``TooLarge`` (code ``too_large``) with a clear reason:
* decompressed stream sizes — every stream's FlateDecode chain is inflated in bounded steps (its output counted and
  dropped, never held), so a flate bomb is refused after ``MAX_STREAM_BYTES`` of output, not after filling memory; an
  image stream may not decode beyond its declared pixels; the whole document is capped at ``MAX_DECODED_BYTES``;
* images inside Form XObjects — the page's resources are walked through nested forms (cycles and depth bounded), and
  every image counts toward ``MAX_PIXELS`` and the page's ``MAX_IMAGE_BYTES_PER_PAGE`` like a page-level image;
* inline images (``BI … ID … EI``) in page and form content — counted (``MAX_INLINE_IMAGES`` per document) and their
  pixels added to the same budgets.
Pure: pikepdf in, an ``OCRError`` out; it imports no other project package and keeps nothing. A malformed structure
that the checks cannot walk is ``CorruptInput``. Never: decodes a stream whose filter chain it cannot bound (such a
stream larger than ``MAX_UNBOUNDED_RAW`` is refused), or follows a reference cycle.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

from .errors import CorruptInput, OCRError, TooLarge

MAX_PIXELS = 40_000_000               # per image (mirrors inputs.MAX_PIXELS)
MAX_IMAGE_BYTES_PER_PAGE = 200 * 1024 * 1024   # decoded image bytes drawn by one page, forms and inline included
MAX_STREAM_BYTES = 32 * 1024 * 1024   # decoded size of one non-image stream (content, form, font, ...)
MAX_DECODED_BYTES = 512 * 1024 * 1024  # decoded size of all streams of the document
MAX_INLINE_IMAGES = 500               # inline images in the whole document
MAX_FORM_DEPTH = 12                   # nested Form XObjects
MAX_UNBOUNDED_RAW = 64 * 1024         # raw size of a stream whose filters cannot be inflated in bounded steps
_STEP = 1 << 20
_IMAGE_CODECS = {"/DCTDecode", "/JPXDecode", "/JBIG2Decode", "/CCITTFaxDecode"}  # output bounded by the pixels
_SLACK = 1.02


def check_pdf(pdf: Any, *, max_pixels: int | None = None, max_page_image_bytes: int | None = None) -> None:
    """Raise TooLarge if any stream, image or page of `pdf` (an open pikepdf.Pdf) exceeds the limits (the caller's
    pixel and per-page image limits when given, else this module's)."""
    pixels = max_pixels or MAX_PIXELS
    page_bytes = max_page_image_bytes or MAX_IMAGE_BYTES_PER_PAGE
    try:
        _check_streams(pdf, pixels)
        inline_seen = [0]
        for number, page in enumerate(pdf.pages, 1):
            budget = _PageBudget(number, pixels, page_bytes)
            _walk(page.obj, budget, inline_seen, depth=0, seen=set())
    except OCRError:
        raise
    except MemoryError as exc:
        raise TooLarge("PDF exhausts memory while being checked") from exc
    except Exception as exc:  # pikepdf raises many kinds on broken structure
        raise CorruptInput(f"malformed PDF structure: {type(exc).__name__}") from exc


class _PageBudget:
    def __init__(self, number: int, max_pixels: int, max_bytes: int) -> None:
        self.number, self.max_pixels, self.max_bytes = number, max_pixels, max_bytes
        self.bytes = 0

    def image(self, width: int, height: int, components: int, bits: int, where: str) -> None:
        if width <= 0 or height <= 0:
            return
        if width * height > self.max_pixels:
            raise TooLarge(f"{where} image {width}x{height} on page {self.number} exceeds "
                           f"{self.max_pixels / 1e6:.0f} MP")
        self.bytes += width * height * max(1, components) * max(1, bits) // 8
        if self.bytes > self.max_bytes:
            raise TooLarge(f"images on page {self.number} (forms and inline included) decompress beyond the limit")


def _filters(stream: Any) -> list[str]:
    import pikepdf

    value = stream.get("/Filter")
    if value is None:
        return []
    if isinstance(value, pikepdf.Array):
        return [str(v) for v in value]
    return [str(value)]


def _inflated(raw: bytes, stages: int) -> Iterator[bytes]:
    """The output of `stages` chained FlateDecode filters, in pieces of at most about _STEP bytes."""

    def stage(pieces: Iterator[bytes]) -> Iterator[bytes]:
        inflater = zlib.decompressobj()
        for piece in pieces:
            data = piece
            while data and not inflater.eof:
                try:
                    out = inflater.decompress(data, _STEP)
                except zlib.error:
                    return  # a broken stream ends here; pdfium decides what to make of it
                if out:
                    yield out
                data = inflater.unconsumed_tail
            if inflater.eof:
                return

    pieces: Iterator[bytes] = (raw[i:i + _STEP] for i in range(0, len(raw), _STEP))
    for _ in range(stages):
        pieces = stage(pieces)
    return pieces


def _declared_image_bytes(stream: Any) -> int | None:
    if stream.get("/Subtype") != "/Image":
        return None
    width, height = int(stream.get("/Width", 0)), int(stream.get("/Height", 0))
    bits = int(stream.get("/BitsPerComponent", 8))
    return max(0, width) * max(0, height) * 4 * max(1, bits) // 8


def _check_streams(pdf: Any, max_pixels: int) -> None:
    import pikepdf

    total = 0
    for obj in pdf.objects:
        if not isinstance(obj, pikepdf.Stream):
            continue
        filters = _filters(obj)
        declared = _declared_image_bytes(obj)
        if declared is not None and declared > max_pixels * 4 * 2:
            raise TooLarge(f"PDF image of {declared} decoded bytes exceeds the pixel limit")
        if filters and filters[-1] in _IMAGE_CODECS:
            continue  # decodes to its declared pixels, checked above and per page
        cap = MAX_STREAM_BYTES if declared is None else int(declared * _SLACK) + 4096
        raw = obj.read_raw_bytes()
        if all(f in ("/FlateDecode", "/Fl") for f in filters):
            size = 0
            for piece in _inflated(raw, len(filters)) if filters else iter((raw,)):
                size += len(piece)
                if size > cap:
                    raise TooLarge("a PDF stream decompresses beyond the limit (decompression bomb)")
        elif len(raw) <= MAX_UNBOUNDED_RAW:
            size = len(obj.read_bytes())  # small: even LZW's worst ratio stays far below the caps
            if size > cap:
                raise TooLarge("a PDF stream decompresses beyond the limit")
        else:
            raise TooLarge(f"a {len(raw)}-byte PDF stream uses filters {filters} whose output cannot be bounded")
        total += size
        if total > MAX_DECODED_BYTES:
            raise TooLarge("the PDF's streams decompress beyond the limit")


_COMPONENTS = {"/DeviceGray": 1, "/G": 1, "/CalGray": 1, "/DeviceRGB": 3, "/RGB": 3, "/CalRGB": 3, "/Lab": 3,
               "/DeviceCMYK": 4, "/CMYK": 4}


def _components(colorspace: Any) -> int:
    return _COMPONENTS.get(str(colorspace), 4) if colorspace is not None else 4


def _walk(holder: Any, budget: _PageBudget, inline_seen: list[int], *, depth: int, seen: set) -> None:
    """Images drawn by a page or form: its XObjects (recursing into forms) and the inline images of its content."""
    import pikepdf

    if depth > MAX_FORM_DEPTH:
        raise TooLarge(f"Form XObjects nest deeper than {MAX_FORM_DEPTH} on page {budget.number}")
    resources = holder.get("/Resources")
    xobjects = resources.get("/XObject") if resources is not None else None
    for xobj in list(xobjects.values()) if xobjects is not None else []:
        if not isinstance(xobj, pikepdf.Stream):
            continue
        subtype = xobj.get("/Subtype")
        if subtype == "/Image":
            budget.image(int(xobj.get("/Width", 0)), int(xobj.get("/Height", 0)),
                         _components(xobj.get("/ColorSpace")), int(xobj.get("/BitsPerComponent", 8)),
                         "form" if depth else "page")
        elif subtype == "/Form":
            key = xobj.objgen if xobj.objgen != (0, 0) else id(xobj)
            if key in seen:
                continue  # drawn again, or a cycle: its images were counted once on this path
            seen.add(key)
            _walk(xobj, budget, inline_seen, depth=depth + 1, seen=seen)
    _inline_images(holder, budget, inline_seen)


def _inline_images(holder: Any, budget: _PageBudget, inline_seen: list[int]) -> None:
    import pikepdf

    if isinstance(holder, pikepdf.Dictionary) and "/Contents" not in holder:
        return  # a page without content
    for instruction in pikepdf.parse_content_stream(holder):
        if not isinstance(instruction, pikepdf.ContentStreamInlineImage):
            continue
        inline_seen[0] += 1
        if inline_seen[0] > MAX_INLINE_IMAGES:
            raise TooLarge(f"the PDF has more than {MAX_INLINE_IMAGES} inline images")
        image = instruction.iimage
        budget.image(int(image.width), int(image.height), _components(image.obj.get("/ColorSpace")),
                     int(image.bits_per_component or 8), "inline")
