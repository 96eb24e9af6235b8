"""Offline extraction of Chinese lab reports (检验报告单) from photos, scans and PDFs.

Pure: bytes in, a structured LabReport out. Imports nothing from the other project packages; never sees identities,
keys or the database.

    from ocr import extract
    report = extract(open("sheet.jpg", "rb").read())
    print(report.to_json())

Pipeline: sniff (magic bytes) -> limits before decoding (inputs.py: 40 MP, 20 pages, 50 MB, PDF image sizes)
-> PDF: pikepdf checks (encrypted/malformed/absurd rejected, active content stripped), pypdfium2 text layer with
positions when born digital, else the page rendered and OCR'd -> image: EXIF orientation; a phone screenshot
(screenshot.py) is read in full-resolution tiles with its phone chrome and watermarks removed (chrome.py, colour.py),
any other image gets page-quadrilateral perspective correction when the quad is trustworthy (preprocess.py) ->
PP-OCR via rapidocr/onnxruntime (engine.py, weights from the wheel, never downloaded; model names + SHA-256 in every
result) -> deskew by box angles -> rows and columns from geometry (layout.py: fuzzy header keywords, side-by-side
tables, merged boxes split by pattern, wrapped cells, bowed baselines; cells.py: empty cells re-read; cards.py:
result cards and list rows without a header; headerless fallback) -> parsing and normalisation (parse.py,
analytes.py; screen_header.py for unlabelled screen headers) -> LabReport (report.py) with consistency-based
needs_review.

CLI: ``healthvault ocr FILE... --json`` / ``python -m ocr FILE... --json`` (one JSON object per line).
Engine selection: HEALTHVAULT_OCR_ENGINE=rapidocr|paddleocr (see engine.py).
"""
__version__ = "0.1.0"

from .errors import CorruptInput, EncryptedPDF, EngineError, InputError, OCRError, TooLarge, UnsupportedFormat
from .report import LabReport, ResultRow


def extract(data: bytes, *, filename_hint: str | None = None, engine=None) -> "LabReport":
    """Extract a LabReport from the bytes of a PNG, JPEG or PDF.

    Raises an ``OCRError`` subclass with a stable ``code`` on any failure: ``unsupported_format``, ``corrupt_input``,
    ``encrypted_pdf``, ``too_large`` (input errors), ``engine_error``, or ``extraction_failed`` (an unexpected
    error inside the pipeline, chained as ``__cause__``), so a worker can always record the failure and go on.
    """
    from .pipeline import extract as _extract
    from .sessions import release_heap

    try:
        return _extract(data, filename_hint=filename_hint, engine=engine)
    except OCRError:
        raise
    except MemoryError as e:
        raise TooLarge("out of memory while extracting") from e
    except Exception as e:
        raise OCRError(f"extraction failed: {type(e).__name__}: {e}", code="extraction_failed") from e
    finally:
        release_heap()   # the page's arrays are gone with _extract's frame: their memory goes back to the system


__all__ = [
    "CorruptInput",
    "EncryptedPDF",
    "EngineError",
    "InputError",
    "LabReport",
    "OCRError",
    "ResultRow",
    "TooLarge",
    "UnsupportedFormat",
    "__version__",
    "extract",
]
