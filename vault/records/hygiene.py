"""Upload hygiene: what an uploaded file may carry into the vault (the entry points, limits and refusals).

Owns the entry points (`clean_stream`, `clean`), the processing `Limits` and the refusals (`UnsafeFile` and its
subclasses, all 422 problems), and dispatches by sniffed kind to the cleaners:
- PDF (vault/records/pdf_hygiene.py): rewritten whole by qpdf (pikepdf) under limits, without actions, scripts,
  attachments, multimedia and metadata;
- JPEG, PNG, HEIC (vault/records/image_hygiene.py): metadata stripped losslessly at the segment / chunk level (a
  photo whose EXIF asks for a rotation is turned upright first); HEIC decoded and re-encoded without metadata.
Encrypted, malformed or over-limit files are refused with a 422 problem and nothing is stored; a kind with no
cleaner is refused as malformed.

Streams: the cleaners read a seekable source (an upload's encrypted spool through kms.stream_reader.RandomAccessReader)
and emit the stored copy in pieces, so memory stays bounded whatever the file size (each cleaner's docstring says
what it holds).
Never: writes plaintext anywhere; stores anything of a refused file (the caller discards what was emitted); trusts a
length, offset or count read from the file without a bounds check.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from typing import BinaryIO

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
    from vault.records import image_hygiene, pdf_hygiene  # they import this module (Limits, the refusals)

    cleaner = {sniff.PDF: pdf_hygiene.clean_pdf_stream, sniff.JPEG: image_hygiene.clean_jpeg_stream,
               sniff.PNG: image_hygiene.clean_png_stream, sniff.HEIC: image_hygiene.clean_heic_stream}.get(kind)
    if cleaner is None:
        raise MalformedFile()
    cleaner(src, emit, limits)


def clean(data: bytes, *, kind: str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The stored copy of `data` (in memory: for tests and small inputs; uploads use `clean_stream`)."""
    out: list[bytes] = []
    clean_stream(io.BytesIO(data), out.append, kind=kind, limits=limits)
    cleaned = b"".join(out)
    return data if cleaned == data else cleaned

