from tests.helpers import jpeg_bytes, pdf_bytes, png_bytes
from vault.records import sniff


def test_kinds_are_sniffed_from_bytes():
    assert sniff.sniff(pdf_bytes()) == sniff.PDF
    assert sniff.sniff(png_bytes()) == sniff.PNG
    assert sniff.sniff(jpeg_bytes()) == sniff.JPEG
    assert sniff.sniff(b"\0\0\0\x18ftypheic\0\0\0\0") == sniff.HEIC
    assert sniff.sniff(b"GIF89a....") is None
    assert sniff.sniff(b"<html><body>%PDF-</body></html>") is None
    assert sniff.sniff(b"") is None


def test_declared_type_must_agree_with_bytes():
    assert sniff.declared_matches(None, sniff.PNG)
    assert sniff.declared_matches("application/octet-stream", sniff.PNG)
    assert sniff.declared_matches("image/jpg", sniff.JPEG)
    assert sniff.declared_matches("application/pdf; charset=binary", sniff.PDF)
    assert not sniff.declared_matches("image/png", sniff.PDF)
    assert not sniff.declared_matches("text/plain", sniff.PNG)
