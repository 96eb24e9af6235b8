import io
import os
import random

import pytest

from kms import CryptoError, DataKey, stream
from kms.stream import HEADER_SIZE, StreamDecryptor, StreamEncryptor

SEG = 4096  # the smallest allowed segment keeps these tests fast
FULL = SEG + 16
AD = b"hv-test-blob-aad"
SIZES = [0, 1, SEG - 1, SEG, SEG + 1, int(3.5 * SEG)]


def seal(key, plaintext, ad=AD, segment_size=SEG) -> bytes:
    out = io.BytesIO()
    assert stream.encrypt_file(key, io.BytesIO(plaintext), out, ad, segment_size=segment_size) == len(plaintext)
    return out.getvalue()


def open_all(key, ciphertext, ad=AD) -> bytes:
    out = io.BytesIO()
    n = stream.decrypt_file(key, io.BytesIO(ciphertext), out, ad)
    assert n == len(out.getvalue())
    return out.getvalue()


def push_decrypt(key, ciphertext, chunk=1000, ad=AD) -> bytes:
    decryptor = StreamDecryptor(key, ad)
    parts = [decryptor.update(ciphertext[i:i + chunk]) for i in range(0, len(ciphertext), chunk)]
    return b"".join(parts) + decryptor.finalize()


def all_ways_fail(key, ciphertext, ad=AD):
    with pytest.raises(CryptoError):
        open_all(key, ciphertext, ad)
    with pytest.raises(CryptoError):
        b"".join(stream.iter_decrypt(key, io.BytesIO(ciphertext), ad))
    with pytest.raises(CryptoError):
        b"".join(stream.iter_decrypt(key, io.BytesIO(ciphertext), ad, read_size=1))
    for chunk in (1, 999, FULL, 1 << 20):
        with pytest.raises(CryptoError):
            push_decrypt(key, ciphertext, chunk, ad)


def segments_of(ciphertext):
    body = ciphertext[HEADER_SIZE:]
    return ciphertext[:HEADER_SIZE], [body[i:i + FULL] for i in range(0, len(body), FULL)]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_every_api(size):
    key = DataKey.generate()
    plaintext = os.urandom(size)
    ct = seal(key, plaintext)
    assert len(ct) == HEADER_SIZE + size + 16 * (size // SEG + 1)
    assert open_all(key, ct) == plaintext
    assert b"".join(stream.iter_decrypt(key, io.BytesIO(ct), AD)) == plaintext
    assert b"".join(stream.iter_decrypt(key, io.BytesIO(ct), AD, read_size=3 * FULL)) == plaintext
    for chunk in (1, 7, 1000, FULL, 1 << 20):
        assert push_decrypt(key, ct, chunk) == plaintext
    encryptor = StreamEncryptor(key, AD, segment_size=SEG)
    rng = random.Random(size)
    pieces, pos = [], 0
    while pos < size:
        step = rng.randint(1, 3 * SEG)
        pieces.append(encryptor.update(plaintext[pos:pos + step]))
        pos += step
    pieces.append(encryptor.finalize())
    assert encryptor.plaintext_size == size
    pushed = b"".join(pieces)
    assert len(pushed) == len(ct) and pushed != ct  # same shape, fresh salt and nonce prefix
    assert open_all(key, pushed) == plaintext


def test_first_update_output_begins_with_header_and_buffers_less_than_a_segment():
    key = DataKey.generate()
    encryptor = StreamEncryptor(key, AD, segment_size=SEG)
    first = encryptor.update(b"x" * 10)
    assert first == encryptor.header and len(first) == HEADER_SIZE
    assert encryptor.update(b"x" * (SEG - 10)) and encryptor.update(b"") == b""
    assert len(encryptor.finalize()) == 16  # empty last segment still emitted
    with pytest.raises(ValueError):
        encryptor.update(b"more")


def test_finalize_without_update_emits_header_and_last_segment():
    key = DataKey.generate()
    encryptor = StreamEncryptor(key, AD, segment_size=SEG)
    ct = encryptor.finalize()
    assert len(ct) == HEADER_SIZE + 16
    assert open_all(key, ct) == b""


def test_default_segment_size_round_trip():
    key = DataKey.generate()
    plaintext = os.urandom(2 * stream.DEFAULT_SEGMENT_SIZE + 123)
    out = io.BytesIO()
    stream.encrypt_file(key, io.BytesIO(plaintext), out, AD)
    assert open_all(key, out.getvalue()) == plaintext
    assert 64 * 1024 <= stream.DEFAULT_SEGMENT_SIZE <= 1024 * 1024


@pytest.mark.parametrize("size", [SEG, 3 * SEG, int(3.5 * SEG)])
def test_truncation_at_every_segment_boundary(size):
    key = DataKey.generate()
    ct = seal(key, os.urandom(size))
    header, segments = segments_of(ct)
    for keep in range(len(segments)):
        all_ways_fail(key, header + b"".join(segments[:keep]))


def test_truncation_inside_header_and_segments():
    key = DataKey.generate()
    ct = seal(key, os.urandom(int(2.5 * SEG)))
    for cut in (1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 10, HEADER_SIZE + FULL + 5, len(ct) - 1, len(ct) - 17):
        all_ways_fail(key, ct[:cut])


def test_reordered_segments_detected():
    key = DataKey.generate()
    header, segments = segments_of(seal(key, os.urandom(int(3.5 * SEG))))
    swapped = [segments[1], segments[0]] + segments[2:]
    all_ways_fail(key, header + b"".join(swapped))


def test_duplicated_segment_detected():
    key = DataKey.generate()
    header, segments = segments_of(seal(key, os.urandom(int(3.5 * SEG))))
    all_ways_fail(key, header + b"".join(segments[:2] + [segments[1]] + segments[2:]))
    all_ways_fail(key, header + b"".join(segments + [segments[-1]]))


@pytest.mark.parametrize("extra", [b"\x00", os.urandom(16), os.urandom(SEG + 16), os.urandom(5 * SEG)])
def test_appended_bytes_detected(extra):
    key = DataKey.generate()
    ct = seal(key, os.urandom(int(1.5 * SEG)))
    all_ways_fail(key, ct + extra)


def test_splicing_segments_from_another_blob_detected():
    key = DataKey.generate()
    header_a, segs_a = segments_of(seal(key, os.urandom(3 * SEG + 5)))
    _, segs_b = segments_of(seal(key, os.urandom(3 * SEG + 5)))
    all_ways_fail(key, header_a + segs_a[0] + segs_b[1] + b"".join(segs_a[2:]))


def test_bit_flip_in_header_detected():
    key = DataKey.generate()
    ct = seal(key, os.urandom(SEG + 100))
    for position in range(HEADER_SIZE):
        damaged = bytearray(ct)
        damaged[position] ^= 0x01
        all_ways_fail(key, bytes(damaged))


def test_bit_flip_in_body_detected():
    key = DataKey.generate()
    ct = seal(key, os.urandom(int(2.5 * SEG)))
    positions = list(range(HEADER_SIZE, len(ct), 997)) + [HEADER_SIZE + FULL - 1, HEADER_SIZE + FULL, len(ct) - 1]
    for position in positions:
        damaged = bytearray(ct)
        damaged[position] ^= 0x80
        all_ways_fail(key, bytes(damaged))


def test_wrong_key_and_wrong_associated_data():
    key = DataKey.generate()
    ct = seal(key, os.urandom(SEG + 1))
    all_ways_fail(DataKey.generate(), ct)
    all_ways_fail(DataKey.from_bytes(key.material(), key_id=key.key_id, version=2), ct)
    all_ways_fail(DataKey.from_bytes(key.material(), key_id=os.urandom(16)), ct)
    all_ways_fail(key, ct, ad=b"another record")


def test_resolver_receives_header_identity():
    key = DataKey.generate(version=5)
    plaintext = os.urandom(SEG * 2)
    ct = seal(key, plaintext)
    seen = []

    def resolver(key_id, version):
        seen.append((key_id, version))
        return key

    assert open_all(resolver, ct) == plaintext
    assert push_decrypt(resolver, ct) == plaintext
    assert seen == [(key.key_id, 5), (key.key_id, 5)]
    all_ways_fail(lambda key_id, version: DataKey.generate(version=5), ct)


def test_segment_size_limits():
    key = DataKey.generate()
    for bad in (0, 4095, 16 * 1024 * 1024 + 1):
        with pytest.raises(ValueError):
            StreamEncryptor(key, AD, segment_size=bad)
    ct = bytearray(seal(key, b"abc"))
    for forged in (0, 1024, 2**32 - 1):  # segment_size field in the header: checked before any allocation
        ct[22:26] = forged.to_bytes(4, "big")
        all_ways_fail(key, bytes(ct))


def test_never_returns_plaintext_of_an_unauthenticated_segment():
    key = DataKey.generate()
    plaintext = os.urandom(4 * SEG + 10)
    ct = bytearray(seal(key, plaintext))
    ct[HEADER_SIZE + 2 * FULL + 100] ^= 0x04  # damage segment 2
    ct = bytes(ct)
    for chunk in (1, 333, FULL, len(ct)):
        decryptor = StreamDecryptor(key, AD)
        released = b""
        with pytest.raises(CryptoError):
            for i in range(0, len(ct), chunk):
                released += decryptor.update(ct[i:i + chunk])
            decryptor.finalize()
        assert released == plaintext[:len(released)]
        assert len(released) <= 2 * SEG and len(released) % SEG == 0
    released = b""
    with pytest.raises(CryptoError):
        for piece in stream.iter_decrypt(key, io.BytesIO(ct), AD, read_size=1):
            released += piece
    assert released == plaintext[:2 * SEG]
    sink = io.BytesIO()
    with pytest.raises(CryptoError):
        stream.decrypt_file(key, io.BytesIO(ct), sink, AD)
    assert sink.getvalue() == plaintext[:2 * SEG]


def test_decryptor_refuses_input_after_a_failure():
    key = DataKey.generate()
    ct = seal(key, os.urandom(3 * SEG))
    decryptor = StreamDecryptor(key, AD)
    with pytest.raises(CryptoError):
        decryptor.update(ct[:HEADER_SIZE] + bytes(FULL))
    with pytest.raises(CryptoError):
        decryptor.update(ct[HEADER_SIZE:])
    with pytest.raises(CryptoError):
        decryptor.finalize()


def test_decryptor_done_refuses_more():
    key = DataKey.generate()
    ct = seal(key, b"abc")
    decryptor = StreamDecryptor(key, AD)
    assert decryptor.update(ct) == b""
    assert decryptor.finalize() == b"abc"
    with pytest.raises(CryptoError):
        decryptor.update(b"x")


class Trickle(io.RawIOBase):
    """A source that returns at most a few bytes per read, like a socket or pipe."""

    def __init__(self, data: bytes, step: int = 7) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(self._step, len(self._data) - self._pos, len(buffer))
        buffer[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


class ReadOnly:
    def __init__(self, data: bytes) -> None:
        self._io = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._io.read(min(n, 5) if n and n > 0 else n)


def test_short_reads_are_not_mistaken_for_the_end():
    key = DataKey.generate()
    plaintext = os.urandom(2 * SEG + 3)
    out = io.BytesIO()
    assert stream.encrypt_file(key, Trickle(plaintext), out, AD, segment_size=SEG) == len(plaintext)
    ct = out.getvalue()
    assert open_all(key, ct) == plaintext
    sink = io.BytesIO()
    stream.decrypt_file(key, Trickle(ct, 11), sink, AD)
    assert sink.getvalue() == plaintext
    assert b"".join(stream.iter_decrypt(key, Trickle(ct, 13), AD)) == plaintext
    sink = io.BytesIO()
    stream.decrypt_file(key, ReadOnly(ct), sink, AD)
    assert sink.getvalue() == plaintext


def test_field_ciphertext_is_not_a_stream():
    from kms import envelope

    key = DataKey.generate()
    all_ways_fail(key, envelope.encrypt(key, os.urandom(200), AD))
