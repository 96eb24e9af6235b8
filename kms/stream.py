"""Streaming AEAD for file blobs: fixed-size segments, each authenticated on its own (the STREAM construction, as in
Tink's AesGcmHkdfStreaming).

Owns: the blob wire format, per-blob subkey derivation, and the rules that make truncation, reordering, duplication
and appending detectable while memory stays bounded by one segment whatever the blob size.
Never: returns or writes plaintext of a segment whose tag has not verified; decides a stream is complete before it
has seen the segment flagged "last". Plaintext released before `finalize()` (or before `iter_decrypt` is exhausted)
is authentic but maybe not complete: a consumer that must not act on a truncated file waits for the end.

Why segments: one-shot AEAD of multi-MB buffers is page-fault bound on the target VM and holds the whole file in
memory (MEASURED-LIMITS §1); segments of 64 KiB-1 MiB are faster and bound memory.

Wire format (integers big-endian):

    header, 49 bytes
    offset  size  field
    0       1     format_version   u8, = 1
    1       1     suite            u8 (1 = AES-256-GCM, 2 = SM4-GCM)
    2       16    key_id           the DEK's id
    18      4     key_version      u32
    22      4     segment_size     u32, plaintext bytes per full segment, 4 KiB..16 MiB
    26      16    salt             random per blob
    42      7     nonce_prefix     random per blob

    then segments 0, 1, ..., k:
        ciphertext (segment_size bytes; the last segment 0..segment_size-1 bytes) || tag (16)

Only the last segment is shorter than segment_size, and it is always present (an empty plaintext still gets one
16-byte segment), so a stream ending on a full segment is by construction truncated.

Subkey = HKDF-H(ikm = DEK, salt = salt, info = b"hv/stream/v1" || header[0:26] || associated_data), where the
header's suite picks H and the length: SHA-256 and 32 bytes for AES-256-GCM (suite 1), SM3 and 16 bytes for SM4-GCM
(suite 2). A fresh subkey per blob means the DEK (which may also encrypt fields with random nonces) never shares a
nonce space with a file, and the associated data is bound through the key.
Segment i: the suite's AEAD (AES-256-GCM or SM4-GCM) under the subkey, nonce = nonce_prefix(7) || u32 i || u8 last
(0 or 1), AAD = header (49). A blob is opened with the suite its header names, so old AES blobs keep decrypting after
a switch to the SM suite.
The index in the nonce catches reordering and duplication; the last flag catches truncation and appending; the
header in every AAD catches header edits.

Readers of this format: StreamDecryptor, decrypt_file and iter_decrypt here (sequential), and
kms/stream_reader.py's RandomAccessReader (seekable: any segment, authenticated on read), which reuses this module's
header layout, subkey derivation and nonce suffix.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kms import suites
from kms.envelope import KeyOrResolver, resolve
from kms.errors import CryptoError
from kms.keys import DataKey
from kms.suites import TAG_SIZE

FORMAT_VERSION = 1
# 64 KiB: measured by bench/bench_crypto.py on the 2-vCPU target. encrypt_file/decrypt_file are flat from 64 KiB to
# 1 MiB (they reuse buffers), but the push API uploads use (StreamEncryptor.update) drops from ~3 GB/s at 64 KiB to
# ~1 GB/s at >= 256 KiB: bigger segments mean a partial-segment copy per feed and result buffers above glibc's
# mmap threshold (first-touch page faults, MEASURED-LIMITS §1). The tag overhead is 16 B per 64 KiB (0.02%).
DEFAULT_SEGMENT_SIZE = 64 * 1024
MIN_SEGMENT_SIZE = 4 * 1024
MAX_SEGMENT_SIZE = 16 * 1024 * 1024

_PREFIX = struct.Struct(">BB16sII")  # format, suite, key_id, key_version, segment_size
PREFIX_SIZE = _PREFIX.size  # 26
SALT_SIZE = 16
NONCE_PREFIX_SIZE = 7
HEADER_SIZE = PREFIX_SIZE + SALT_SIZE + NONCE_PREFIX_SIZE  # 49
_INFO_DOMAIN = b"hv/stream/v1"
_MAX_INDEX = 0xFFFFFFFF
_SUFFIX = struct.Struct(">IB")  # segment index, last flag


def _subkey_aead(key: DataKey, header: bytes, associated_data: bytes) -> suites.Aead:
    material = key.material()
    salt = header[PREFIX_SIZE:PREFIX_SIZE + SALT_SIZE]
    info = _INFO_DOMAIN + header[:PREFIX_SIZE] + bytes(associated_data)
    suite = key.suite  # resolve() has checked it equals the header's suite
    subkey = HKDF(algorithm=suites.hash_algorithm(suite), length=suites.key_size(suite), salt=salt,
                  info=info).derive(material)
    return suites.new_aead(suite, subkey)


class _Segments:
    """Seals or opens segment i of one blob; the counter lives here so no caller can skip or repeat an index."""

    __slots__ = ("_aead", "_header", "_index", "_nonce_prefix")

    _aead: suites.Aead

    def __init__(self, aead: suites.Aead, header: bytes) -> None:
        self._aead = aead
        self._header = header
        self._nonce_prefix = header[PREFIX_SIZE + SALT_SIZE:HEADER_SIZE]
        self._index = 0

    def _next_nonce(self, last: bool) -> bytes:
        if self._index > _MAX_INDEX:
            raise OverflowError("stream has more than 2^32 segments")
        nonce = self._nonce_prefix + _SUFFIX.pack(self._index, 1 if last else 0)
        self._index += 1
        return nonce

    def seal(self, plaintext: suites.Buffer, last: bool) -> bytes:
        return self._aead.encrypt(self._next_nonce(last), plaintext, self._header)

    def seal_into(self, plaintext: suites.Buffer, out: suites.Buffer, last: bool) -> None:
        self._aead.encrypt_into(self._next_nonce(last), plaintext, self._header, out)

    def open(self, segment: suites.Buffer, last: bool) -> bytes:
        try:
            return self._aead.decrypt(self._next_nonce(last), segment, self._header)
        except (InvalidTag, ValueError, OverflowError):
            raise CryptoError() from None

    def open_into(self, segment: suites.Buffer, out: bytearray | memoryview, last: bool) -> None:
        try:
            self._aead.decrypt_into(self._next_nonce(last), segment, self._header, out)
        except (InvalidTag, ValueError, OverflowError):
            out[:] = bytes(len(out))  # the buffer may hold unauthenticated plaintext: scrub it
            raise CryptoError() from None


class StreamEncryptor:
    """Push plaintext in, get ciphertext out; holds at most one partial segment."""

    def __init__(self, key: DataKey, associated_data: bytes, *, segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
        if not isinstance(segment_size, int) or not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError(f"segment_size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE}")
        if key.wiped:
            raise ValueError("cannot encrypt with a wiped DataKey")
        self.header = (_PREFIX.pack(FORMAT_VERSION, key.suite, key.key_id, key.version, segment_size)
                       + os.urandom(SALT_SIZE) + os.urandom(NONCE_PREFIX_SIZE))
        self.segment_size = segment_size
        self.plaintext_size = 0
        self._segments = _Segments(_subkey_aead(key, self.header, associated_data), self.header)
        self._pending = bytearray()
        self._header_sent = False
        self._finished = False

    def _take_header(self, out: list[bytes]) -> None:
        if not self._header_sent:
            out.append(self.header)
            self._header_sent = True

    def update(self, data: bytes) -> bytes:
        if self._finished:
            raise ValueError("update() after finalize()")
        out: list[bytes] = []
        self._take_header(out)
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        self.plaintext_size += len(view)
        size, pos, pending = self.segment_size, 0, self._pending
        if pending:
            pos = min(size - len(pending), len(view))
            pending += view[:pos]
            if len(pending) < size:
                return b"".join(out)
            out.append(self._segments.seal(pending, last=False))
            pending.clear()
        # A full segment is sealed at once as "not last": the last segment is always the short (maybe empty) one.
        while len(view) - pos >= size:
            out.append(self._segments.seal(view[pos:pos + size], last=False))
            pos += size
        pending += view[pos:]
        return b"".join(out)

    def finalize(self) -> bytes:
        if self._finished:
            raise ValueError("finalize() called twice")
        self._finished = True
        out: list[bytes] = []
        self._take_header(out)
        out.append(self._segments.seal(self._pending, last=True))
        self._pending = bytearray()
        return b"".join(out)


class StreamDecryptor:
    """Push ciphertext in, get plaintext of whole authenticated segments out.

    After any CryptoError the decryptor refuses further input: a half-verified stream is never resumed.
    """

    def __init__(self, key: KeyOrResolver, associated_data: bytes) -> None:
        self._key = key
        self._associated_data = bytes(associated_data)
        self._segments: _Segments | None = None
        self._full = 0
        self._segment_size = 0
        self._pending = bytearray()
        self._state = "open"  # open | done | failed

    def _start(self, header: bytes) -> _Segments:
        if len(header) != HEADER_SIZE:
            raise CryptoError()
        fmt, suite, key_id, key_version, segment_size = _PREFIX.unpack_from(header, 0)
        if fmt != FORMAT_VERSION or not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise CryptoError()
        key = resolve(self._key, key_id, key_version, suite)
        try:
            aead = _subkey_aead(key, header, self._associated_data)
        except ValueError:  # the key was wiped
            raise CryptoError() from None
        segments = self._segments = _Segments(aead, header)
        self._segment_size = segment_size
        self._full = segment_size + TAG_SIZE
        return segments

    def _guard(self) -> None:
        if self._state != "open":
            raise CryptoError()

    def update(self, data: bytes) -> bytes:
        self._guard()
        try:
            return self._update(memoryview(data).cast("B"))
        except BaseException:
            self._state = "failed"
            raise

    def _update(self, view: memoryview) -> bytes:
        pos, pending, segments = 0, self._pending, self._segments
        if segments is None:
            pos = min(HEADER_SIZE - len(pending), len(view))
            pending += view[:pos]
            if len(pending) < HEADER_SIZE:
                return b""
            segments = self._start(bytes(pending))
            pending.clear()
        out: list[bytes] = []
        full = self._full
        if pending:
            take = min(full - len(pending), len(view) - pos)
            pending += view[pos:pos + take]
            pos += take
            if len(pending) < full:
                return b""
            out.append(segments.open(pending, last=False))
            pending.clear()
        # A full-length segment is never the last one (see format), so it can be verified and released now.
        while len(view) - pos >= full:
            out.append(segments.open(view[pos:pos + full], last=False))
            pos += full
        pending += view[pos:]
        return b"".join(out)

    def finalize(self) -> bytes:
        self._guard()
        try:
            if self._segments is None or len(self._pending) < TAG_SIZE:
                raise CryptoError()  # no header, or no last segment: truncated
            plaintext = self._segments.open(self._pending, last=True)
        except BaseException:
            self._state = "failed"
            raise
        self._state = "done"
        self._pending = bytearray()
        return plaintext


def _read_full(src: BinaryIO, buf: memoryview) -> int:
    """Fill buf unless the source ends first; a short count therefore means end of stream, never a short read."""
    got, want = 0, len(buf)
    readinto = getattr(src, "readinto", None)
    while got < want:
        if readinto is not None:
            n = readinto(buf[got:])
        else:
            chunk = src.read(want - got)
            n = len(chunk) if chunk is not None else None
            if n:
                buf[got:got + n] = chunk
        if n is None:
            raise ValueError("non-blocking sources are not supported")
        if n == 0:
            break
        got += n
    return got


def encrypt_file(key: DataKey, src: BinaryIO, dst: BinaryIO, associated_data: bytes, *,
                 segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Encrypt src into dst segment by segment; returns the plaintext byte count.

    Two buffers are reused for the whole file (no per-segment allocation, which is what keeps this near raw AES-GCM
    speed), so dst.write must have consumed the bytes when it returns, as every io object does.
    """
    encryptor = StreamEncryptor(key, associated_data, segment_size=segment_size)
    encryptor._header_sent = True
    encryptor._finished = True
    segments = encryptor._segments
    dst.write(encryptor.header)
    plain = memoryview(bytearray(segment_size))
    sealed = memoryview(bytearray(segment_size + TAG_SIZE))
    total = 0
    while True:
        n = _read_full(src, plain)
        total += n
        if n < segment_size:
            segments.seal_into(plain[:n], sealed[:n + TAG_SIZE], last=True)
            dst.write(sealed[:n + TAG_SIZE])
            return total
        segments.seal_into(plain, sealed, last=False)
        dst.write(sealed)


def decrypt_file(key: KeyOrResolver, src: BinaryIO, dst: BinaryIO, associated_data: bytes) -> int:
    """Decrypt src into dst; returns the plaintext byte count.

    Only authenticated segments reach dst, but on CryptoError dst may already hold a prefix of the file:
    the caller discards dst. Buffers are reused as in encrypt_file.
    """
    decryptor = StreamDecryptor(key, associated_data)
    header = memoryview(bytearray(HEADER_SIZE))
    if _read_full(src, header) != HEADER_SIZE:
        raise CryptoError()
    segments = decryptor._start(bytes(header))
    size, full = decryptor._segment_size, decryptor._full
    decryptor._state = "done"
    sealed = memoryview(bytearray(full))
    plain = memoryview(bytearray(size))
    total = 0
    while True:
        n = _read_full(src, sealed)
        if n < full:
            if n < TAG_SIZE:
                raise CryptoError()
            segments.open_into(sealed[:n], plain[:n - TAG_SIZE], last=True)
            dst.write(plain[:n - TAG_SIZE])
            return total + n - TAG_SIZE
        segments.open_into(sealed, plain, last=False)
        dst.write(plain)
        total += size


def iter_decrypt(key: KeyOrResolver, src: BinaryIO, associated_data: bytes, *,
                 read_size: int = 1 << 20) -> Iterator[bytes]:
    """Plaintext of each authenticated segment, in order; raises CryptoError (after the authentic prefix) if the
    stream is damaged or truncated, so a consumer that streams out must abort rather than finish on that error.

    Reads about `read_size` bytes at a time (whole segments, at least one) into one reused buffer; memory stays
    at one read buffer plus the segment being yielded.
    """
    decryptor = StreamDecryptor(key, associated_data)
    header = memoryview(bytearray(HEADER_SIZE))
    if _read_full(src, header) != HEADER_SIZE:
        raise CryptoError()
    segments = decryptor._start(bytes(header))
    decryptor._state = "done"
    full = decryptor._full
    per_read = max(1, read_size // full)
    buffer = memoryview(bytearray(per_read * full))
    while True:
        n = _read_full(src, buffer)
        whole, rest = divmod(n, full)
        for i in range(whole):
            yield segments.open(buffer[i * full:(i + 1) * full], last=False)
        if n == len(buffer):
            continue
        # End of stream: what remains must be the (short) last segment; nothing, or a bare fragment, is truncation.
        if rest < TAG_SIZE:
            raise CryptoError()
        tail = segments.open(buffer[whole * full:n], last=True)
        if tail:
            yield tail
        return
