"""kms.stream_reader.RandomAccessReader: a seekable plaintext view of a sealed blob (the upload hygiene pass reads
uploads through it). Every byte it returns was authenticated; truncation, appending and a wrong key or AAD fail at
open."""

from __future__ import annotations

import io
import os
import random

import pytest

from kms import stream, stream_reader
from kms.errors import CryptoError
from kms.keys import DataKey

SEGMENT = 4096


def _sealed(key: DataKey, data: bytes, aad: bytes = b"ad") -> bytes:
    encryptor = stream.StreamEncryptor(key, aad, segment_size=SEGMENT)
    return encryptor.update(data) + encryptor.finalize()


@pytest.fixture
def key() -> DataKey:
    return DataKey(os.urandom(32), key_id=os.urandom(16), version=1, suite=1)


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 5 * SEGMENT, 5 * SEGMENT + 77])
def test_reads_and_seeks_match_the_plaintext(key, size):
    data = os.urandom(size)
    reader = stream_reader.RandomAccessReader(key, io.BytesIO(_sealed(key, data)), b"ad")
    assert reader.size == size
    buffered = io.BufferedReader(reader, 1000)
    assert buffered.read() == data
    rng = random.Random(size)
    for _ in range(100):
        at, length = rng.randint(0, size + 10), rng.randint(0, 3 * SEGMENT)
        buffered.seek(at)
        assert buffered.read(length) == data[at:at + length]
    if size >= 3:
        buffered.seek(-3, os.SEEK_END)
        assert buffered.read() == data[-3:]
    with pytest.raises(ValueError):
        reader.seek(-1)


def test_tampering_fails_at_open_or_read(key):
    data = os.urandom(3 * SEGMENT + 10)
    sealed = _sealed(key, data)
    full = SEGMENT + 16
    for bad in (sealed[:-1], sealed + b"x", sealed[:49 + 3 * full], sealed[:49 + 2 * full], sealed[:20]):
        with pytest.raises(CryptoError):
            stream_reader.RandomAccessReader(key, io.BytesIO(bad), b"ad")
    with pytest.raises(CryptoError):
        stream_reader.RandomAccessReader(key, io.BytesIO(sealed), b"other ad")
    other = DataKey(os.urandom(32), key_id=key.key_id, version=1, suite=1)
    with pytest.raises(CryptoError):
        stream_reader.RandomAccessReader(other, io.BytesIO(sealed), b"ad")
    flipped = bytearray(sealed)
    flipped[49 + 5] ^= 1  # inside the first segment: found when that segment is read
    reader = stream_reader.RandomAccessReader(key, io.BytesIO(bytes(flipped)), b"ad")
    with pytest.raises(CryptoError):
        reader.read(10)
    swapped = sealed[:49] + sealed[49 + full:49 + 2 * full] + sealed[49:49 + full] + sealed[49 + 2 * full:]
    reader = stream_reader.RandomAccessReader(key, io.BytesIO(swapped), b"ad")
    with pytest.raises(CryptoError):  # reordered segments: the index is in the nonce
        reader.read(10)
