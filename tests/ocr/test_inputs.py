"""Input handling: sniffing, limits and hostile files fail cleanly, fast, with stable error codes."""
from __future__ import annotations

import io
import time

import pytest

from ocr import extract
from ocr.errors import CorruptInput, EncryptedPDF, InputError, TooLarge, UnsupportedFormat
from ocr.inputs import sniff

from .sheetgen import encrypted_pdf, many_page_pdf, png_header_only


def _fails(data: bytes, exc, code: str, budget: float = 5.0):
    t = time.perf_counter()
    with pytest.raises(exc) as ei:
        extract(data)
    assert ei.value.code == code
    assert isinstance(ei.value, InputError)
    assert time.perf_counter() - t < budget
    return ei.value


def test_sniff():
    assert sniff(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff(b"\xff\xd8\xff\xe0....") == "jpeg"
    assert sniff(b"%PDF-1.7\n") == "pdf"
    with pytest.raises(UnsupportedFormat):
        sniff(b"GIF89a")


def test_unknown_and_empty():
    _fails(b"hello world, not an image", UnsupportedFormat, "unsupported_format")
    _fails(b"", CorruptInput, "corrupt_input")


def test_corrupted_png():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (400, 300), "white").save(buf, "PNG")
    data = buf.getvalue()
    _fails(data[: len(data) // 2], CorruptInput, "corrupt_input")          # truncated
    bad = bytearray(data)
    bad[60:80] = b"\x00" * 20                                             # garbage in IDAT
    _fails(bytes(bad), CorruptInput, "corrupt_input")


def test_corrupted_jpeg():
    _fails(b"\xff\xd8\xff\xe0" + b"\x13" * 200, CorruptInput, "corrupt_input")


def test_100_megapixel_png_is_refused_without_decoding():
    data = png_header_only(10_000, 10_000)
    assert len(data) < 1000
    err = _fails(data, TooLarge, "too_large", budget=1.0)
    assert "MP" in str(err)


def test_5000_page_pdf_is_refused_fast():
    data = many_page_pdf(5000)
    err = _fails(data, TooLarge, "too_large", budget=10.0)
    assert "5000 pages" in str(err)


def test_encrypted_pdf():
    _fails(encrypted_pdf(), EncryptedPDF, "encrypted_pdf")


def test_malformed_pdf():
    _fails(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage", CorruptInput, "corrupt_input")


def test_pdf_with_absurd_page_size():
    import pikepdf

    pdf = pikepdf.new()
    pdf.add_blank_page()
    pdf.pages[0].obj.MediaBox = [0, 0, 1e6, 1e6]
    buf = io.BytesIO()
    pdf.save(buf)
    _fails(buf.getvalue(), TooLarge, "too_large")


def test_pdf_with_huge_image_is_refused_before_decoding():
    import zlib

    import pikepdf

    pdf = pikepdf.new()
    pdf.add_blank_page(page_size=(595, 842))
    # claims 20000 x 20000 pixels, holds a few bytes
    img = pdf.make_stream(zlib.compress(b"\x00" * 100), Type=pikepdf.Name.XObject, Subtype=pikepdf.Name.Image,
                          Width=20000, Height=20000, ColorSpace=pikepdf.Name.DeviceGray, BitsPerComponent=8,
                          Filter=pikepdf.Name.FlateDecode)
    page = pdf.pages[0]
    page.obj.Resources = pikepdf.Dictionary(XObject=pikepdf.Dictionary(Im0=img))
    page.obj.Contents = pdf.make_stream(b"q 595 0 0 842 0 0 cm /Im0 Do Q")
    buf = io.BytesIO()
    pdf.save(buf)
    _fails(buf.getvalue(), TooLarge, "too_large")


def test_cli_reports_errors_as_json(tmp_path):
    import json

    from click.testing import CliRunner

    from ocr.cli import ocr_command

    bad = tmp_path / "bomb.png"
    bad.write_bytes(png_header_only(12_000, 12_000))
    res = CliRunner().invoke(ocr_command, [str(bad), "--json"])
    assert res.exit_code == 1
    line = json.loads(res.output.strip().splitlines()[0])
    assert line["error"]["code"] == "too_large"


def test_unexpected_failure_is_wrapped_with_a_stable_code(monkeypatch):
    import ocr.pipeline
    from ocr.errors import OCRError

    def boom(*a, **k):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(ocr.pipeline, "find_tables", boom)
    from .sheetgen import digital_pdf

    with pytest.raises(OCRError) as ei:
        extract(digital_pdf().data)
    assert ei.value.code == "extraction_failed"
    assert isinstance(ei.value.__cause__, RuntimeError)
