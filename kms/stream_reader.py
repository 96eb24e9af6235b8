"""A seekable, read-only plaintext view of one streaming-AEAD blob (random access without the whole plaintext).

Owns `RandomAccessReader`: reads a blob in the wire format defined and documented in kms/stream.py (header, then
segments each sealed under the per-blob subkey with nonce = nonce_prefix || u32 index || u8 last), seeking to any
segment and authenticating it on read. It reuses kms.stream's header layout, subkey derivation and nonce suffix
rather than restating them, so there is one definition of the format.
Never: returns plaintext of a segment whose tag has not verified; holds more than one decrypted segment; opens a
blob whose length does not end in a verified "last" segment (truncation and appending fail when the reader opens).
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

from cryptography.exceptions import InvalidTag

from kms.envelope import KeyOrResolver, resolve
from kms.errors import CryptoError
from kms.stream import (
    _MAX_INDEX,
    _PREFIX,
    _SUFFIX,
    FORMAT_VERSION,
    HEADER_SIZE,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    PREFIX_SIZE,
    SALT_SIZE,
    _subkey_aead,
)
from kms.suites import TAG_SIZE


class RandomAccessReader(io.RawIOBase):
    """A seekable, read-only plaintext view of one blob on a seekable ciphertext source.

    For readers that need random access (qpdf opening an upload to sanitize it, vault/records/pdf_hygiene.py) without
    the plaintext ever existing whole: each segment is authenticated when it is read and at most one decrypted
    segment is held. The blob's length and last segment are checked when the reader opens (the last segment must
    verify as "last"), so truncation and appending fail at once, not at the end of a read.
    """

    def __init__(self, key: KeyOrResolver, src: BinaryIO, associated_data: bytes) -> None:
        super().__init__()
        self._src = src
        src.seek(0, os.SEEK_END)
        total = src.tell()
        src.seek(0)
        header = src.read(HEADER_SIZE)
        if len(header) != HEADER_SIZE:
            raise CryptoError()
        fmt, suite, key_id, key_version, segment_size = _PREFIX.unpack_from(header, 0)
        if fmt != FORMAT_VERSION or not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise CryptoError()
        try:
            self._aead = _subkey_aead(resolve(key, key_id, key_version, suite), header, bytes(associated_data))
        except ValueError:
            raise CryptoError() from None
        self._header = header
        self._nonce_prefix = header[PREFIX_SIZE + SALT_SIZE:HEADER_SIZE]
        self._segment_size = segment_size
        self._full = segment_size + TAG_SIZE
        body = total - HEADER_SIZE
        if body < TAG_SIZE:
            raise CryptoError()
        self._last_index = (body - TAG_SIZE) // self._full
        self._last_length = body - self._last_index * self._full
        if not TAG_SIZE <= self._last_length < self._full or self._last_index > _MAX_INDEX:
            raise CryptoError()
        self.size = self._last_index * segment_size + self._last_length - TAG_SIZE
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None
        self._segment(self._last_index)

    def _segment(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        last = index == self._last_index
        self._src.seek(HEADER_SIZE + index * self._full)
        length = self._last_length if last else self._full
        ciphertext = self._src.read(length)
        if len(ciphertext) != length:
            raise CryptoError()
        nonce = self._nonce_prefix + _SUFFIX.pack(index, 1 if last else 0)
        try:
            plaintext = self._aead.decrypt(nonce, ciphertext, self._header)
        except (InvalidTag, ValueError, OverflowError):
            raise CryptoError() from None
        self._cached = (index, plaintext)
        return plaintext

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self.size:
            index, within = divmod(self._pos, self._segment_size)
            plaintext = self._segment(index)
            take = min(len(plaintext) - within, len(view) - done)
            view[done:done + take] = plaintext[within:within + take]
            done += take
            self._pos += take
        return done
