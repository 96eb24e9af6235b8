"""Error types of the OCR package. Every failure carries a stable machine-readable ``code``."""
from __future__ import annotations


class OCRError(Exception):
    """Base class. ``code`` is stable (safe to store, match on and show in an API problem type)."""

    code = "ocr_error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code:
            self.code = code

    def __str__(self) -> str:  # "code: message"
        return f"{self.code}: {self.args[0] if self.args else ''}"


class InputError(OCRError):
    """The bytes are not a page we accept (unknown type, corrupt, encrypted, too large ...)."""

    code = "invalid_input"


class UnsupportedFormat(InputError):
    code = "unsupported_format"


class CorruptInput(InputError):
    code = "corrupt_input"


class EncryptedPDF(InputError):
    code = "encrypted_pdf"


class TooLarge(InputError):
    """Pixel, page or decompressed-size limit exceeded (decompression bombs land here)."""

    code = "too_large"


class EngineError(OCRError):
    code = "engine_error"


# stable codes, for callers that map them to API problem types
CODES = ("unsupported_format", "corrupt_input", "encrypted_pdf", "too_large", "engine_error", "extraction_failed")
