"""ocr/limits.py: what a page-level image check does not see counts toward the limits — images inside Form XObjects,
inline images, decompressed stream sizes (flate bombs). Each crafted PDF fails fast with `too_large`, holding little
memory; ordinary PDFs pass."""
from __future__ import annotations

import io
import resource
import time
import zlib

import pikepdf
import pytest

from ocr import extract, limits
from ocr.errors import TooLarge

from .sheetgen import digital_pdf


def _save(pdf: pikepdf.Pdf) -> bytes:
    buf = io.BytesIO()
    pdf.save(buf)
    return buf.getvalue()


def _refused(data: bytes, words: str, budget: float = 5.0) -> TooLarge:
    started = time.perf_counter()
    with pytest.raises(TooLarge) as info:
        extract(data)
    assert info.value.code == "too_large"
    assert words in str(info.value), str(info.value)
    assert time.perf_counter() - started < budget
    return info.value


def _bomb(size: int) -> bytes:
    """`size` zero bytes, deflated (about 1 KB per MB) without ever holding them."""
    deflater = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    return b"".join(deflater.compress(chunk) for _ in range(size >> 20)) + deflater.flush()


def _page(pdf: pikepdf.Pdf, content: bytes, **resources) -> pikepdf.Page:
    page = pdf.add_blank_page(page_size=(595, 842))
    if resources:
        page.obj.Resources = pikepdf.Dictionary(**resources)
    page.obj.Contents = pdf.make_stream(content)
    return page


def _image(pdf: pikepdf.Pdf, width: int, height: int, data: bytes | None = None) -> pikepdf.Stream:
    return pdf.make_stream(data if data is not None else zlib.compress(b"\x00" * 100), Type=pikepdf.Name.XObject,
                           Subtype=pikepdf.Name.Image, Width=width, Height=height,
                           ColorSpace=pikepdf.Name.DeviceGray, BitsPerComponent=8, Filter=pikepdf.Name.FlateDecode)


def _form(pdf: pikepdf.Pdf, content: bytes, **xobjects) -> pikepdf.Stream:
    return pdf.make_stream(content, Type=pikepdf.Name.XObject, Subtype=pikepdf.Name.Form, BBox=[0, 0, 595, 842],
                           Resources=pikepdf.Dictionary(XObject=pikepdf.Dictionary(**xobjects)))


def test_an_image_hidden_in_a_form_xobject_counts_toward_the_pixel_limit():
    pdf = pikepdf.new()
    inner = _form(pdf, b"q 595 0 0 842 0 0 cm /Im0 Do Q", Im0=_image(pdf, 8000, 6000))  # 48 MP, declared small
    outer = _form(pdf, b"/Fm1 Do", Fm1=inner)  # two levels deep: the page names only a form
    _page(pdf, b"/Fm0 Do", XObject=pikepdf.Dictionary(Fm0=outer))
    _refused(_save(pdf), "form image 8000x6000")


def test_form_xobjects_that_draw_each_other_do_not_hang():
    pdf = pikepdf.new()
    a = _form(pdf, b"/B Do")
    b = _form(pdf, b"/A Do", A=a)
    a.Resources.XObject.B = b
    _page(pdf, b"/A Do", XObject=pikepdf.Dictionary(A=a))
    limits.check_pdf(pdf)  # a cycle is walked once: no recursion error, nothing over the limits


def test_many_inline_images_are_refused():
    pdf = pikepdf.new()
    one = b"q 1 0 0 1 0 0 cm BI /W 2 /H 2 /BPC 8 /CS /G ID \x00\x00\x00\x00 EI Q\n"
    _page(pdf, one * (limits.MAX_INLINE_IMAGES + 1))
    _refused(_save(pdf), "inline images")


def test_an_inline_image_over_the_pixel_limit_is_refused():
    pdf = pikepdf.new()
    _page(pdf, b"BI /W 9000 /H 9000 /BPC 8 /CS /G /F /Fl ID " + zlib.compress(b"\x00" * 64) + b" EI")
    _refused(_save(pdf), "inline image 9000x9000")


def test_a_flate_bomb_content_stream_is_refused_without_inflating_it():
    pdf = pikepdf.new()
    page = _page(pdf, b"")
    page.obj.Contents = pdf.make_stream(_bomb(1 << 30), Filter=pikepdf.Name.FlateDecode)  # 1 GiB of zeros, ~1 MB
    data = _save(pdf)
    assert len(data) < 2 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _refused(data, "decompression bomb")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200  # the stream was counted in 1 MiB steps, never held (1 GiB would show here)


def test_an_image_stream_that_inflates_beyond_its_declared_pixels_is_refused():
    pdf = pikepdf.new()
    _page(pdf, b"q 10 0 0 10 0 0 cm /Im0 Do Q",
          XObject=pikepdf.Dictionary(Im0=_image(pdf, 10, 10, data=_bomb(64 << 20))))
    _refused(_save(pdf), "decompression bomb")


def test_a_stream_with_an_unboundable_filter_chain_is_refused():
    pdf = pikepdf.new()
    page = _page(pdf, b"")
    page.obj.Contents = pdf.make_stream(b"\x80" * (limits.MAX_UNBOUNDED_RAW + 1),
                                        Filter=pikepdf.Name.RunLengthDecode)
    _refused(_save(pdf), "cannot be bounded")


def test_ordinary_pdfs_pass():
    with pikepdf.open(io.BytesIO(digital_pdf().data)) as pdf:
        limits.check_pdf(pdf)
