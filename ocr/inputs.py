"""Bytes -> pages. Sniffs the type from magic bytes, enforces limits before anything is decoded.

A page is either an image (numpy BGR array, for OCR) or a list of positioned text tokens (born-digital PDF).
"""
from __future__ import annotations

import bisect
import io
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import limits
from .errors import CorruptInput, EncryptedPDF, TooLarge, UnsupportedFormat

# Limits (module-level so a deployment can tune them; tests rely on the defaults)
MAX_BYTES = 50 * 1024 * 1024          # raw upload size
MAX_PIXELS = 40_000_000               # per image (decoded), e.g. 40 MP
MAX_PAGES = 20                        # pages per PDF
MAX_PDF_OBJECTS = 200_000             # objects in a PDF
MAX_IMAGE_BYTES_PER_PAGE = 200 * 1024 * 1024   # decoded size of the image XObjects drawn on one page
MAX_PAGE_POINTS = 14400               # PDF page side, in points (200 in; PDF spec's own limit)
RENDER_LONG_SIDE = 2000               # scanned PDF pages are rendered to at most this many pixels (OCR cuts there)
RENDER_DPI = 200


@dataclass
class Token:
    """A piece of text with its axis-aligned box in page pixels (or points for PDF text)."""

    text: str
    x0: float
    y0: float
    x1: float
    y1: float
    conf: float = 1.0
    angle: float = 0.0   # radians, of the text baseline (OCR boxes)
    colour: str | None = None   # "red" | "blue" when the glyphs are clearly coloured (screenshots), else None

    @property
    def cx(self) -> float:
        return (self.x0 + self.x1) / 2

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2

    @property
    def h(self) -> float:
        return self.y1 - self.y0


@dataclass
class Page:
    number: int                     # 1-based
    kind: str                       # "image" | "pdf_text" | "pdf_image"
    image: np.ndarray | None = None  # BGR uint8
    tokens: list[Token] = field(default_factory=list)
    width: float = 0
    height: float = 0


def sniff(data: bytes) -> str:
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if b"%PDF-" in data[:1024]:
        return "pdf"
    raise UnsupportedFormat("not a PNG, JPEG or PDF file")


def load_pages(data: bytes, filename_hint: str | None = None) -> tuple[str, list[Page]]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UnsupportedFormat("input must be bytes")
    data = bytes(data)
    if len(data) == 0:
        raise CorruptInput("empty input")
    if len(data) > MAX_BYTES:
        raise TooLarge(f"input is {len(data)} bytes; limit {MAX_BYTES}")
    kind = sniff(data)
    if kind == "pdf":
        return kind, load_pdf(data)
    return kind, [Page(1, "image", image=load_image(data))]


# ----------------------------------------------------------------------------- images
def load_image(data: bytes) -> np.ndarray:
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit below, before decoding
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im: Image.Image = Image.open(io.BytesIO(data))
            w, h = im.size
    except Exception as e:
        raise CorruptInput(f"cannot read image header: {e}") from e
    if w <= 0 or h <= 0:
        raise CorruptInput("image has no pixels")
    if w * h > MAX_PIXELS:
        raise TooLarge(f"image is {w}x{h} = {w * h / 1e6:.1f} MP; limit {MAX_PIXELS / 1e6:.0f} MP")
    if im.format not in ("PNG", "JPEG"):
        raise UnsupportedFormat(f"image format {im.format} not accepted")
    try:
        if im.format == "JPEG":
            # decode at reduced scale when the page is far larger than OCR needs
            im.draft("RGB", (max(1, w // 2), max(1, h // 2))) if max(w, h) > 2 * 2 * RENDER_LONG_SIDE else None
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
    except TooLarge:
        raise
    except Exception as e:
        raise CorruptInput(f"cannot decode image: {e}") from e
    import cv2

    arr = np.asarray(im)
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)


# ----------------------------------------------------------------------------- PDF
def _check_pdf_structure(data: bytes) -> tuple[bytes, list[bool]]:
    """Open with pikepdf; reject encrypted/malformed/absurd. Returns sanitised bytes and per-page has_image."""
    import pikepdf

    try:
        pdf = pikepdf.open(io.BytesIO(data))
    except pikepdf.PasswordError as e:
        raise EncryptedPDF("PDF is password protected") from e
    except Exception as e:
        raise CorruptInput(f"malformed PDF: {e}") from e
    with pdf:
        if pdf.is_encrypted:
            raise EncryptedPDF("PDF is encrypted")
        try:
            npages = len(pdf.pages)
        except Exception as e:
            raise CorruptInput(f"malformed PDF page tree: {e}") from e
        if npages == 0:
            raise CorruptInput("PDF has no pages")
        if npages > MAX_PAGES:
            raise TooLarge(f"PDF has {npages} pages; limit {MAX_PAGES}")
        if len(pdf.objects) > MAX_PDF_OBJECTS:
            raise TooLarge(f"PDF has {len(pdf.objects)} objects; limit {MAX_PDF_OBJECTS}")
        limits.check_pdf(pdf, max_pixels=MAX_PIXELS, max_page_image_bytes=MAX_IMAGE_BYTES_PER_PAGE)  # ocr/limits.py
        has_image = []
        try:
            for page in pdf.pages:
                mb = [float(v) for v in page.mediabox]
                pw, ph = abs(mb[2] - mb[0]), abs(mb[3] - mb[1])
                if not (1 <= pw <= MAX_PAGE_POINTS and 1 <= ph <= MAX_PAGE_POINTS):
                    raise TooLarge(f"PDF page size {pw:.0f}x{ph:.0f} pt is absurd")
                total = 0
                n_img = 0
                for _name, obj in _page_images(page):
                    w, h = int(obj.get("/Width", 0)), int(obj.get("/Height", 0))
                    bpc = int(obj.get("/BitsPerComponent", 8))
                    total += w * h * max(1, bpc) * 4 // 8
                    if w * h > MAX_PIXELS:
                        raise TooLarge(f"PDF image {w}x{h} exceeds {MAX_PIXELS / 1e6:.0f} MP")
                    n_img += 1
                if total > MAX_IMAGE_BYTES_PER_PAGE:
                    raise TooLarge("PDF page images decompress beyond the limit")
                has_image.append(n_img > 0)
            # strip active content and attachments before anything renders it
            root = pdf.Root
            for key in ("/OpenAction", "/AA", "/AcroForm"):
                if key in root:
                    del root[key]
            if "/Names" in root:
                names = root.Names
                for key in ("/JavaScript", "/EmbeddedFiles"):
                    if key in names:
                        del names[key]
            out = io.BytesIO()
            pdf.save(out)
        except (TooLarge, EncryptedPDF):
            raise
        except Exception as e:
            raise CorruptInput(f"malformed PDF: {e}") from e
    return out.getvalue(), has_image


def _page_images(page):
    import pikepdf

    try:
        res = page.obj.get("/Resources")
        xobjs = res.get("/XObject") if res is not None else None
    except Exception:  # noqa: BLE001
        return
    if xobjs is None:
        return
    for name in list(xobjs.keys()):
        obj = xobjs[name]
        if isinstance(obj, pikepdf.Stream) and obj.get("/Subtype") == "/Image":
            yield name, obj


def load_pdf(data: bytes) -> list[Page]:
    import pypdfium2 as pdfium  # type: ignore[import-untyped]

    clean, _has_image = _check_pdf_structure(data)
    try:
        doc = pdfium.PdfDocument(clean)
    except Exception as e:
        raise CorruptInput(f"PDF cannot be opened for rendering: {e}") from e
    pages: list[Page] = []
    try:
        for i in range(len(doc)):
            page = doc[i]
            w, h = page.get_size()
            tokens = pdf_text_tokens(page)
            if tokens:
                tokens += missing_cid_runs(clean, i, tokens, h)
            if _usable_text(tokens):
                pages.append(Page(i + 1, "pdf_text", tokens=tokens, width=w, height=h))
            else:
                scale = min(RENDER_DPI / 72.0, RENDER_LONG_SIDE / max(w, h))
                bmp = page.render(scale=scale, grayscale=False)
                arr = bmp.to_numpy()
                img = np.ascontiguousarray(arr[:, :, :3]) if arr.ndim == 3 else np.repeat(arr[:, :, None], 3, 2)
                # pdfium renders BGR(A) by default
                pages.append(Page(i + 1, "pdf_image", image=img, width=img.shape[1], height=img.shape[0]))
            page.close()
    finally:
        doc.close()
    return pages


def _usable_text(tokens: list[Token]) -> bool:
    chars = sum(len(t.text.strip()) for t in tokens)
    return chars >= 20


def pdf_text_tokens(page) -> list[Token]:
    """Characters of the text layer grouped into tokens (runs of characters on one line without wide gaps).

    Coordinates are converted to a top-left origin in PDF points.
    """
    tp = page.get_textpage()
    try:
        n = tp.count_chars()
        if n <= 0:
            return []
        text = tp.get_text_range(0, n)
        _, ph = page.get_size()
        chars: list[tuple[str, float, float, float, float] | None] = []   # None: a line break
        # get_text_range may differ in length from n with surrogate/ligature edge cases: read per char then
        if len(text) != n:
            text = "".join(tp.get_text_range(i, 1) for i in range(n))
        for i in range(n):
            c = text[i]
            if c in "\r\n":
                chars.append(None)
                continue
            try:
                left, b, r, t = tp.get_charbox(i, loose=False)
            except Exception:  # noqa: BLE001, S112 - a glyph pdfium cannot place is skipped, the rest of the line kept
                continue
            if c.isspace() or r <= left:
                chars.append(("SP", left, ph - t, r, ph - b))
                continue
            try:
                _ll, lb, _lr, lt = tp.get_charbox(i, loose=True)
                y0, y1 = ph - lt, ph - lb
            except Exception:  # noqa: BLE001
                y0, y1 = ph - t, ph - b
            chars.append((c, left, y0, r, y1))
    finally:
        tp.close()
    tokens: list[Token] = []
    cur: list = []

    def flush():
        if cur:
            s = "".join(c[0] for c in cur)
            tokens.append(Token(s, min(c[1] for c in cur), min(c[2] for c in cur),
                                max(c[3] for c in cur), max(c[4] for c in cur)))
        cur.clear()

    pending_space = False
    for ch in chars:
        if ch is None:
            flush()
            pending_space = False
            continue
        if ch[0] == "SP":
            pending_space = True
            continue
        if cur:
            last = cur[-1]
            hgt = max(1e-3, last[4] - last[2])
            same_line = abs((ch[2] + ch[4]) / 2 - (last[2] + last[4]) / 2) < 0.5 * hgt
            gap = ch[1] - last[3]
            if not same_line or gap > 0.9 * hgt or gap < -0.5 * hgt or (pending_space and gap > 0.6 * hgt):
                flush()
            elif pending_space:
                cur.append((" ", last[3], last[2], ch[1], last[4]))
        cur.append(ch)
        pending_space = False
    flush()
    return [t for t in tokens if t.text.strip()]


def missing_cid_runs(pdf_bytes: bytes, index: int, tokens: list[Token], page_height: float) -> list[Token]:
    """Text runs that pdfium drops for non-embedded CID fonts with a UCS-2 CMap (e.g. STSong-Light + UniGB-UCS2-H,
    common in LIS exports): some glyphs (女, ↑, ↓ ...) come back with no Unicode. The string bytes of such fonts are
    UCS-2 code units, so the text can be read from the content stream directly. Only runs with no pdfium token at
    their position are returned."""
    import pikepdf

    out: list[Token] = []
    try:
        with pikepdf.open(io.BytesIO(pdf_bytes)) as pdf:
            page = pdf.pages[index]
            resources = page.obj.get("/Resources")
            fonts = resources.get("/Font") if resources is not None else None
            ucs2 = set()
            for name, f in list(fonts.items()) if fonts is not None else []:
                enc = f.get("/Encoding")
                if f.get("/Subtype") == "/Type0" and isinstance(enc, pikepdf.Name) and "UCS2" in str(enc):
                    ucs2.add(str(name))
            if not ucs2:
                return []
            by_y = sorted(tokens, key=lambda t: t.cy)
            ys = [t.cy for t in by_y]
            font, size = None, 10.0
            tx = ty = 0.0
            lx = ly = 0.0
            for instruction in pikepdf.parse_content_stream(page):
                operands, o = instruction.operands, str(instruction.operator)
                if o == "BT":
                    tx = ty = lx = ly = 0.0
                elif o == "Tf":
                    font, size = str(operands[0]), float(operands[1])
                elif o == "Tm":
                    tx, ty = float(operands[4]), float(operands[5])
                    lx, ly = tx, ty
                elif o in ("Td", "TD"):
                    lx += float(operands[0])
                    ly += float(operands[1])
                    tx, ty = lx, ly
                elif o in ("Tj", "TJ", "'", '"') and font in ucs2:
                    if o == "TJ":
                        raw = b"".join(bytes(x) for x in operands[0] if isinstance(x, pikepdf.String))
                    else:
                        raw = bytes(operands[-1])
                    try:
                        text = raw.decode("utf-16-be")
                    except UnicodeDecodeError:
                        continue
                    if not text.strip():
                        continue
                    width = sum(size if ord(c) > 0x2000 else 0.5 * size for c in text)
                    y1 = page_height - ty + 0.12 * size
                    y0 = y1 - size
                    cy = (y0 + y1) / 2
                    lo = bisect.bisect_left(ys, cy - 0.6 * size)
                    hi = bisect.bisect_right(ys, cy + 0.6 * size)
                    near = [by_y[k] for k in range(lo, hi)]
                    hit = any(abs(t.x0 - tx) < 0.6 * size or t.x0 - 1 <= tx <= t.x1 - 0.3 * size for t in near)
                    if not hit:
                        out.append(Token(text, tx, y0, tx + width, y1))
                    tx += width
    except Exception:  # noqa: BLE001  (best effort; pdfium's text stays authoritative)
        return []
    return out
