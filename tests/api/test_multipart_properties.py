"""Issue 14 item 12: the project's own multipart parser (api/multipart.py) bounds parts and part headers whatever
python-multipart version is installed, and no body — random, hostile or truncated, in any chunking — ends in anything
but a parsed form or a problem (IP-1: hypothesis properties, plus a few bodies over HTTP).

The sink is the real UploadSink (a fresh DEK under a registered patient's KEK, an encrypted temp file)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import multipart
from tests.helpers import login, png_bytes, register
from vault.errors import VaultError
from vault.records.uploads import UploadSink

BOUNDARY = b"hvboundary42"
CONTENT_TYPE = "multipart/form-data; boundary=" + BOUNDARY.decode()
PROPERTY = settings(max_examples=80, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
pytestmark = pytest.mark.parametrize("backend", ["sqlite"])  # the parser touches no database


@pytest.fixture
def patient_id(client) -> str:
    return register(client, username="mp-patient")["patient_id"]


class Consumed:
    """The body as an async stream of chunks, counting how much of it the parser asked for."""

    def __init__(self, body: bytes, size: int) -> None:
        self.chunks = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
        self.taken = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.taken += len(chunk)
            yield chunk


def run(vault, patient_id: str, body: bytes, *, chunk: int = 4096, content_type: str = CONTENT_TYPE,
        max_body: int = 1 << 20):
    """(result or the VaultError, bytes consumed, sinks opened); any other exception fails the test."""
    sinks: list[UploadSink] = []

    def open_sink(declared: str | None) -> UploadSink:
        sinks.append(UploadSink(vault, record_id=str(uuid.uuid4()), patient_id=patient_id, declared_type=declared,
                                max_bytes=max_body))
        return sinks[-1]

    stream = Consumed(body, chunk)
    try:
        outcome: object = asyncio.run(multipart.receive(content_type, stream.__aiter__(), max_body=max_body,
                                                        open_sink=open_sink))
    except VaultError as exc:
        assert 400 <= exc.status < 500, exc
        outcome = exc
    finally:
        for sink in sinks:
            sink.abort()
    return outcome, stream.taken, sinks


def part(headers: list[tuple[bytes, bytes]], data: bytes) -> bytes:
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return b"--" + BOUNDARY + b"\r\n" + head + b"\r\n" + data + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


def field(name: str, value: bytes) -> bytes:
    return part([(b"Content-Disposition", b'form-data; name="' + name.encode() + b'"')], value)


def file_part(data: bytes = b"") -> bytes:
    return part([(b"Content-Disposition", b'form-data; name="file"; filename="a.png"'),
                 (b"Content-Type", b"image/png")], data or png_bytes(b"mp"))


def test_a_well_formed_form_parses(vault, patient_id):
    outcome, _, _ = run(vault, patient_id, form(field("category", b"other"), file_part()))
    assert not isinstance(outcome, VaultError), outcome
    sink, fields, filename = outcome
    assert fields == {"category": "other"} and filename == "a.png" and sink.content_type == "image/png"


@pytest.mark.parametrize(("body", "reason"), [
    (form(part([(b"X-H%d" % i, b"v") for i in range(multipart.MAX_PART_HEADERS)]
               + [(b"Content-Disposition", b'form-data; name="a"')], b"1"), file_part()), "Too many form part headers"),
    (form(part([(b"Content-Disposition", b'form-data; name="a"'), (b"X-Long", b"v" * multipart.MAX_HEADER_BYTES)],
               b"1"), file_part()), "Form part header too long"),
    (form(part([(b"Content-Disposition", b'form-data; name="a"')]
               + [(b"X-%d" % i, b"v" * 900) for i in range(5)], b"1"), file_part()), "too long"),
    (form(part([(b"Content-Disposition", b'form-data; name="a"'), (b"Content-Disposition", b'form-data; name="b"')],
               b"1"), file_part()), "Repeated form part header"),
    (form(*[field(f"f{i}", b"x") for i in range(multipart.MAX_FIELDS)], file_part()), "Too many form fields"),
    (form(field("title", b"t" * (multipart.MAX_FIELD_BYTES + 1)), file_part()), "Form field too long"),
    (form(field("title", b"\xff\xfe"), file_part()), "UTF-8"),
    (form(file_part(), file_part()), "Only one file"),
    (form(field("a", b"1"), field("a", b"2"), file_part()), "Duplicate form field"),
])
def test_each_bound_is_a_form_problem(vault, patient_id, body, reason, tokenizer):
    outcome, _, sinks = run(vault, patient_id, body, chunk=7)
    assert isinstance(outcome, VaultError) and outcome.status == 422 and reason in (outcome.detail or ""), outcome
    assert all(s._closed for s in sinks)


def test_a_boundary_longer_than_rfc_2046_allows_is_refused(vault, patient_id):
    long = "b" * (multipart.MAX_BOUNDARY + 1)
    outcome, taken, _ = run(vault, patient_id, b"--" + long.encode() + b"\r\n",
                            content_type=f"multipart/form-data; boundary={long}")
    assert isinstance(outcome, VaultError) and outcome.status == 422 and taken == 0


@pytest.fixture(params=["installed", "unbounded"])
def tokenizer(request, monkeypatch) -> str:
    """python-multipart as installed, and as an older one without header bounds of its own (0.0.18 had none)."""
    if request.param == "unbounded":
        from python_multipart.multipart import MultipartParser

        def unbounded(boundary: bytes, callbacks: dict) -> MultipartParser:
            return MultipartParser(boundary, callbacks, max_header_count=10**9, max_header_size=10**12)

        monkeypatch.setattr(multipart, "MultipartParser", unbounded)
    return request.param


@pytest.mark.parametrize("what", ["name", "value", "many"])
def test_an_endless_header_is_cut_off_after_the_bound_not_buffered(vault, patient_id, what, tokenizer):
    """10 MB of one header (or of headers) in small chunks: refused once the bound is passed, the rest never read,
    with or without python-multipart's own bounds."""
    endless = b"x" * 10_000_000
    head = {"name": b"--" + BOUNDARY + b"\r\nX-" + endless,
            "value": b"--" + BOUNDARY + b"\r\nX-A: " + endless,
            "many": b"--" + BOUNDARY + b"\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(1_000_000))}[what]
    outcome, taken, _ = run(vault, patient_id, head, chunk=512)
    assert isinstance(outcome, VaultError) and outcome.status == 422
    assert taken <= multipart.MAX_PART_HEADER_BYTES + 2 * 512


headers = st.lists(st.tuples(st.binary(min_size=0, max_size=40), st.binary(min_size=0, max_size=1500)), max_size=12)
parts = st.lists(st.tuples(headers, st.binary(max_size=6000)), max_size=12)


@given(parts=parts, cut=st.integers(min_value=0, max_value=1 << 16), chunk=st.integers(min_value=1, max_value=4096),
       keep_disposition=st.booleans(), file_first=st.booleans())
@PROPERTY
def test_hostile_forms_end_in_a_form_or_a_problem_within_the_bounds(vault, patient_id, parts, cut, chunk,
                                                                     keep_disposition, file_first):
    built = [part(([(b"Content-Disposition", b'form-data; name="f%d"' % i)] if keep_disposition else []) + h, d)
             for i, (h, d) in enumerate(parts)]
    if file_first:
        built.insert(0, file_part())
    body = form(*built)
    body = body[:len(body) - cut % (len(body) + 1)]  # also every truncation
    outcome, _, sinks = run(vault, patient_id, body, chunk=chunk)
    assert len(sinks) <= 1 and all(s._closed for s in sinks if isinstance(outcome, VaultError))
    if not isinstance(outcome, VaultError):  # accepted: then every bound held
        _, fields, _ = outcome
        assert len(fields) < multipart.MAX_FIELDS
        assert all(len(v.encode()) <= multipart.MAX_FIELD_BYTES for v in fields.values())
        for h, _ in parts:
            if all(b"\r" not in n + v and b"\n" not in n + v for n, v in h):  # else the headers are not what they seem
                assert len(h) + keep_disposition <= multipart.MAX_PART_HEADERS
                assert all(len(n.strip()) + len(v.strip()) <= multipart.MAX_HEADER_BYTES for n, v in h)


@given(body=st.binary(max_size=3000), chunk=st.integers(min_value=1, max_value=512),
       boundary=st.binary(min_size=1, max_size=90).filter(lambda b: b.isascii() and b"\r" not in b and b"\n" not in b))
@PROPERTY
def test_random_bytes_never_raise_anything_but_a_problem(vault, patient_id, body, chunk, boundary):
    content_type = "multipart/form-data; boundary=" + boundary.decode("ascii")
    run(vault, patient_id, b"--" + boundary + b"\r\n" + body, chunk=chunk, content_type=content_type)
    run(vault, patient_id, body, chunk=chunk)


@pytest.fixture
def uploader(client) -> dict:
    register(client, username="mp-http")
    return login(client, "mp-http")


@given(data=st.data())
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_hostile_uploads_over_http_are_never_a_500(client, uploader, data):
    headers = uploader
    extra = data.draw(st.lists(st.tuples(st.binary(max_size=30), st.binary(max_size=2000)), max_size=10))
    body = form(part([(b"Content-Disposition", b'form-data; name="category"')] + extra, b"other"), file_part())
    body = body[:data.draw(st.integers(min_value=0, max_value=len(body)))]
    response = client.post("/v1/records", headers={**headers, "content-type": CONTENT_TYPE}, content=body)
    assert response.status_code in (201, 400, 413, 415, 422), response.text
    assert response.headers["content-type"].startswith("application/json" if response.status_code == 201
                                                       else "application/problem+json")
