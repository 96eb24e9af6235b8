"""Streaming multipart/form-data reception for uploads.

Owns turning a request body into (one file streamed into an UploadSink, small text fields). The file part is never
buffered whole nor spooled to disk in plaintext; text fields are capped. A body that ends before the closing boundary
is a TruncatedUpload, and the sink is aborted on every failure path.

Every bound is this module's own, whatever python-multipart version is installed (issue 14 item 12): the boundary's
length (RFC 2046: 1-70 characters), the number of parts, the number of headers of a part, the size of one header and
of all headers of a part, and the size of each text field. python-multipart is used only as a tokenizer (its
callback API, `parse_options_header` and `MultipartParseError`, pinned in pyproject.toml); anything past a bound is
a 422 `invalid-input` (reason `form`) raised before more of it is buffered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from vault.errors import InvalidInput, PayloadTooLarge, TruncatedUpload, VaultError
from vault.records.uploads import UploadSink

MAX_FIELD_BYTES = 4096
MAX_FIELDS = 8  # parts of one form, the file included
MAX_PART_HEADERS = 6  # headers of one part (a browser sends two: Content-Disposition and Content-Type)
MAX_HEADER_BYTES = 1024  # one header, name and value
MAX_PART_HEADER_BYTES = 4096  # every header of one part together (all below python-multipart's newer defaults)
MAX_BOUNDARY = 70  # RFC 2046 §5.1.1
FILE_FIELD = "file"


def _form_error(message: str) -> VaultError:
    return InvalidInput(message, extra={"reason": "form"})


class _Reception:
    def __init__(self, open_sink: Callable[[str | None], UploadSink]) -> None:
        self.open_sink = open_sink
        self.sink: UploadSink | None = None
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._hname = b""
        self._hvalue = b""
        self._name: str | None = None
        self._is_file = False
        self._buffer = bytearray()
        self._parts = 0
        self._header_count = 0
        self._header_bytes = 0

    # Callbacks of python-multipart's parser.
    def on_part_begin(self) -> None:
        self._headers, self._buffer, self._is_file, self._name = {}, bytearray(), False, None
        self._hname = self._hvalue = b""
        self._header_count = self._header_bytes = 0
        self._parts += 1
        if self._parts > MAX_FIELDS:
            raise _form_error("Too many form fields")

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise _form_error("Form part headers too long")
        if len(self._hname) + len(self._hvalue) + size > MAX_HEADER_BYTES:
            raise _form_error("Form part header too long")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._hvalue += data[start:end]

    def on_header_end(self) -> None:
        self._header_count += 1
        if self._header_count > MAX_PART_HEADERS:
            raise _form_error("Too many form part headers")
        name = self._hname.strip().lower()
        if name in self._headers:
            raise _form_error("Repeated form part header")
        self._headers[name] = self._hvalue.strip()
        self._hname = self._hvalue = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name")
        if name is None:
            raise InvalidInput("Form part without a name", extra={"reason": "form"})
        self._name = name.decode("utf-8", "replace")
        if self._name == FILE_FIELD:
            if self.sink is not None:
                raise InvalidInput("Only one file per upload", extra={"reason": "form"})
            raw_filename = params.get(b"filename")
            self.filename = raw_filename.decode("utf-8", "replace") if raw_filename else None
            declared = self._headers.get(b"content-type", b"").decode("latin-1")
            self.sink = self.open_sink(declared)
            self._is_file = True
        elif self._name in self.fields:
            raise _form_error("Duplicate form field")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            assert self.sink is not None  # opened with the file part
            self.sink.write(data[start:end])
            return
        self._buffer += data[start:end]
        if len(self._buffer) > MAX_FIELD_BYTES:
            raise InvalidInput("Form field too long", extra={"reason": "form"})

    def on_part_end(self) -> None:
        if not self._is_file and self._name is not None:
            try:
                self.fields[self._name] = self._buffer.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput("Form fields must be UTF-8", extra={"reason": "form"}) from exc

    def on_end(self) -> None:
        self.ended = True


async def receive(content_type: str, body: AsyncIterator[bytes], *, max_body: int,
                  open_sink: Callable[[str | None], UploadSink]) -> tuple[UploadSink, dict[str, str], str | None]:
    """Parse the body; returns the finished sink (not yet committed), the text fields and the file name."""
    mime, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise InvalidInput("Uploads must be multipart/form-data", extra={"reason": "content-type"})
    if len(boundary) > MAX_BOUNDARY:
        raise InvalidInput(f"The multipart boundary may be at most {MAX_BOUNDARY} characters",
                           extra={"reason": "content-type"})
    reception = _Reception(open_sink)
    callbacks: Any = {name: getattr(reception, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
        "on_part_data", "on_part_end", "on_end")}
    parser = MultipartParser(boundary, callbacks)
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > max_body:
                allowed = reception.sink.max_bytes if reception.sink else max_body
                raise PayloadTooLarge(f"Files may be at most {allowed} bytes")
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise InvalidInput("Malformed multipart body", extra={"reason": "form"}) from exc
        if not reception.ended:
            raise TruncatedUpload()
        if reception.sink is None:
            raise InvalidInput("The form has no 'file' part", extra={"reason": "form"})
        reception.sink.finish()
    except ClientDisconnect as exc:
        if reception.sink is not None:
            reception.sink.abort()
        raise TruncatedUpload("The client disconnected before the upload was complete") from exc
    except BaseException:
        if reception.sink is not None:
            reception.sink.abort()
        raise
    return reception.sink, reception.fields, reception.filename
