"""The SM suite's symmetric half: SM4-GCM with the AESGCM interface, field and stream formats under SM4, HMAC-SM3 blind
indexes, and the start-up self-test. Known answers come from RFC 8998 A.1 (SM4-GCM) and GB/T 32905 A.1 (SM3); GmSSL
(gmssl-pyx) is used as a second, independent implementation of SM4-GCM and HMAC-SM3."""

from __future__ import annotations

import io
import os

import pytest
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers import algorithms

from kms import CryptoError, DataKey, blind_index, envelope, stream, suites
from kms.suites import AES_256_GCM, SM4_GCM, SM4GCM

RFC8998 = {k: bytes.fromhex(v) for k, v in suites._SM4_GCM_KAT.items()}
AD = b"hv-test-aad"
SEG = 4096


def test_names_sizes_and_purposes():
    assert suites.by_name("aes") == AES_256_GCM == 1 and suites.by_name("sm") == SM4_GCM == 2
    assert suites.name_of(2) == "sm" and suites.key_size(SM4_GCM) == 16 and suites.key_size(AES_256_GCM) == 32
    assert suites.purpose("pseudonym", AES_256_GCM) == "pseudonym"
    assert suites.purpose("pseudonym", SM4_GCM) == "sm:pseudonym"
    for bad in ("gm", "", None):
        with pytest.raises(ValueError):
            suites.by_name(bad)
    with pytest.raises(ValueError):
        suites.key_size(3)
    with pytest.raises(ValueError):
        suites.new_aead(3, bytes(16))


def test_rfc8998_vector_through_the_aesgcm_interface():
    aead = suites.new_aead(SM4_GCM, RFC8998["key"])
    assert isinstance(aead, SM4GCM)
    assert aead.encrypt(RFC8998["nonce"], RFC8998["plaintext"], RFC8998["aad"]) == RFC8998["sealed"]
    assert aead.decrypt(RFC8998["nonce"], RFC8998["sealed"], RFC8998["aad"]) == RFC8998["plaintext"]
    out = bytearray(len(RFC8998["plaintext"]) + 16)
    aead.encrypt_into(RFC8998["nonce"], RFC8998["plaintext"], RFC8998["aad"], out)
    assert bytes(out) == RFC8998["sealed"]
    back = bytearray(len(RFC8998["plaintext"]))
    aead.decrypt_into(RFC8998["nonce"], memoryview(RFC8998["sealed"]), RFC8998["aad"], back)
    assert bytes(back) == RFC8998["plaintext"]


def test_any_change_raises_invalid_tag_and_releases_nothing():
    aead = SM4GCM(RFC8998["key"])
    sealed, nonce, aad = RFC8998["sealed"], RFC8998["nonce"], RFC8998["aad"]
    for i in range(0, len(sealed), 7):
        with pytest.raises(InvalidTag):
            aead.decrypt(nonce, sealed[:i] + bytes([sealed[i] ^ 1]) + sealed[i + 1:], aad)
    for args in ((nonce, sealed, aad + b"x"), (bytes(12), sealed, aad), (nonce, sealed[:15], aad),
                 (nonce, b"", aad), (nonce, sealed[:-1], aad)):
        with pytest.raises(InvalidTag):
            aead.decrypt(*args)
    buf = bytearray(len(sealed) - 16)
    with pytest.raises(InvalidTag):
        aead.decrypt_into(nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]), aad, buf)
    assert bytes(buf) == bytes(len(buf))  # nothing unauthenticated was written
    with pytest.raises(InvalidTag):
        SM4GCM(os.urandom(16)).decrypt(nonce, sealed, aad)


def test_sm4_gcm_agrees_with_gmssl():
    import gmssl_pyx as gmssl

    for size in (1, 15, 16, 17, 1000, 65536):  # (GmSSL's binding refuses an empty plaintext)
        key, nonce, aad, data = os.urandom(16), os.urandom(12), os.urandom(size % 50), os.urandom(size)
        ours = SM4GCM(key).encrypt(nonce, data, aad)
        ciphertext, tag = gmssl.sm4_gcm_encrypt(key, nonce, aad, data)
        assert ours == ciphertext + tag


def test_key_and_buffer_sizes_are_checked():
    for size in (0, 15, 17, 32):
        with pytest.raises(ValueError):
            SM4GCM(bytes(size))
    with pytest.raises(ValueError):
        SM4GCM(bytes(16)).encrypt_into(bytes(12), b"abc", b"", bytearray(18))
    with pytest.raises(ValueError):
        SM4GCM(bytes(16)).decrypt_into(bytes(12), bytes(20), b"", bytearray(5))


def test_data_keys_of_the_sm_suite_are_16_bytes():
    key = DataKey.generate(suite=SM4_GCM)
    assert key.suite == SM4_GCM and len(key.material()) == 16
    assert isinstance(key._cipher(), SM4GCM)
    for material in (bytes(32), bytes(15)):
        with pytest.raises(ValueError):
            DataKey.from_bytes(material, key_id=bytes(16), suite=SM4_GCM)


def test_field_ciphertexts_under_sm4_carry_suite_2_and_detect_every_change():
    key = DataKey.generate(suite=SM4_GCM, version=3)
    aad = envelope.field_aad(table="patients", column="real_name", row_id="r1", patient_id="p1")
    ct = envelope.encrypt(key, "王芳".encode(), aad)
    assert ct[0] == 1 and ct[1] == SM4_GCM and envelope.header_of(ct) == (1, SM4_GCM, key.key_id, 3)
    assert len(ct) == envelope.HEADER_SIZE + len("王芳".encode()) + 16
    assert envelope.decrypt(key, ct, aad) == "王芳".encode()
    for i in range(len(ct)):
        with pytest.raises(CryptoError):
            envelope.decrypt(key, ct[:i] + bytes([ct[i] ^ 0x01]) + ct[i + 1:], aad)
    moved = envelope.field_aad(table="patients", column="phone", row_id="r1", patient_id="p1")
    with pytest.raises(CryptoError):
        envelope.decrypt(key, ct, moved)
    # The same key bytes presented as another suite are refused by the header check, not tried.
    with pytest.raises(CryptoError):
        envelope.decrypt(lambda key_id, version: DataKey.generate(key_id=key_id, version=version), ct, aad)


def test_one_resolver_opens_aes_and_sm4_ciphertexts_side_by_side():
    old, new = DataKey.generate(), DataKey.generate(suite=SM4_GCM)
    keys = {(k.key_id, k.version): k for k in (old, new)}
    aad = envelope.field_aad(table="records", column="title", row_id="x", patient_id="y")
    a, s = envelope.encrypt(old, b"old", aad), envelope.encrypt(new, b"new", aad)
    assert (a[1], s[1]) == (AES_256_GCM, SM4_GCM)
    resolver = lambda key_id, version: keys[(key_id, version)]
    assert envelope.decrypt(resolver, a, aad) == b"old" and envelope.decrypt(resolver, s, aad) == b"new"
    blobs = []
    for key, data in ((old, os.urandom(3 * SEG + 5)), (new, os.urandom(3 * SEG + 5))):
        out = io.BytesIO()
        stream.encrypt_file(key, io.BytesIO(data), out, AD, segment_size=SEG)
        blobs.append((out.getvalue(), data))
    for blob, data in blobs:
        back = io.BytesIO()
        stream.decrypt_file(resolver, io.BytesIO(blob), back, AD)
        assert back.getvalue() == data
    assert blobs[0][0][1] == AES_256_GCM and blobs[1][0][1] == SM4_GCM


def _seal(key, data):
    out = io.BytesIO()
    stream.encrypt_file(key, io.BytesIO(data), out, AD, segment_size=SEG)
    return out.getvalue()


def _every_reader_fails(key, blob):
    with pytest.raises(CryptoError):
        stream.decrypt_file(key, io.BytesIO(blob), io.BytesIO(), AD)
    with pytest.raises(CryptoError):
        b"".join(stream.iter_decrypt(key, io.BytesIO(blob), AD))
    decryptor = stream.StreamDecryptor(key, AD)
    with pytest.raises(CryptoError):
        decryptor.update(blob)
        decryptor.finalize()


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, int(3.5 * SEG)])
def test_streams_under_sm4_round_trip_through_every_api(size):
    key = DataKey.generate(suite=SM4_GCM)
    data = os.urandom(size)
    blob = _seal(key, data)
    assert blob[1] == SM4_GCM and len(blob) == stream.HEADER_SIZE + size + 16 * (size // SEG + 1)
    out = io.BytesIO()
    assert stream.decrypt_file(key, io.BytesIO(blob), out, AD) == size and out.getvalue() == data
    assert b"".join(stream.iter_decrypt(key, io.BytesIO(blob), AD, read_size=1)) == data
    encryptor = stream.StreamEncryptor(key, AD, segment_size=SEG)
    pushed = b"".join(encryptor.update(data[i:i + 1000]) for i in range(0, size, 1000)) + encryptor.finalize()
    decryptor = stream.StreamDecryptor(key, AD)
    assert b"".join(decryptor.update(pushed[i:i + 777]) for i in range(0, len(pushed), 777)) \
        + decryptor.finalize() == data


def test_sm4_streams_detect_truncation_reordering_duplication_appending_and_flips():
    key = DataKey.generate(suite=SM4_GCM)
    blob = _seal(key, os.urandom(3 * SEG + 100))
    head, body, full = blob[:stream.HEADER_SIZE], blob[stream.HEADER_SIZE:], SEG + 16
    segments = [body[i:i + full] for i in range(0, len(body), full)]
    assert len(segments) == 4
    for cut in range(1, 4):  # truncated at every segment boundary: the "last" flag is missing
        _every_reader_fails(key, head + b"".join(segments[:cut]))
    _every_reader_fails(key, blob[:-1])
    _every_reader_fails(key, head + segments[1] + segments[0] + b"".join(segments[2:]))
    _every_reader_fails(key, head + segments[0] + segments[0] + b"".join(segments[1:]))
    _every_reader_fails(key, blob + b"\0")
    for position in (1, 20, stream.HEADER_SIZE + 5, len(blob) - 3):
        _every_reader_fails(key, blob[:position] + bytes([blob[position] ^ 1]) + blob[position + 1:])
    _every_reader_fails(DataKey.generate(suite=SM4_GCM, key_id=key.key_id), blob)


def test_the_stream_subkey_is_hkdf_sm3_of_16_bytes():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = DataKey.generate(suite=SM4_GCM)
    data = os.urandom(SEG + 10)
    blob = _seal(key, data)
    head = blob[:stream.HEADER_SIZE]
    subkey = HKDF(algorithm=hashes.SM3(), length=16, salt=head[26:42],
                  info=b"hv/stream/v1" + head[:26] + AD).derive(key.material())
    first = SM4GCM(subkey).decrypt(head[42:49] + (0).to_bytes(4, "big") + b"\0", blob[49:49 + SEG + 16], head)
    assert first == data[:SEG]


def test_blind_index_hmac_sm3_matches_gmssl():
    import gmssl_pyx as gmssl

    key = bytes(range(32))
    message = b"hv/bidx/v1\0phone\x0013800138000"
    sm = blind_index.compute(key, kind="phone", normalized_value="13800138000", suite=SM4_GCM)
    assert sm == gmssl.sm3_hmac(key, message)[:16]
    aes = blind_index.compute(key, kind="phone", normalized_value="13800138000")
    assert len(sm) == 16 and sm != aes
    with pytest.raises(ValueError):
        blind_index.compute(key, kind="phone", normalized_value="1", suite=7)


def test_require_passes_here_and_names_what_is_missing(monkeypatch):
    suites.require(AES_256_GCM)
    suites.require(SM4_GCM)

    class NoSM4:
        def __init__(self, key):
            raise UnsupportedAlgorithm("SM4 is not supported by this backend")

    monkeypatch.setattr(algorithms, "SM4", NoSM4)
    suites.require(AES_256_GCM)  # the AES suite does not need SM4
    with pytest.raises(suites.SuiteUnavailable, match="SM4-GCM"):
        suites.require(SM4_GCM)


def test_require_refuses_a_wrong_answer(monkeypatch):
    original = SM4GCM.encrypt
    monkeypatch.setattr(SM4GCM, "encrypt", lambda self, n, d, a: original(self, n, d, a)[:-1] + b"\0")
    with pytest.raises(suites.SuiteUnavailable, match="RFC 8998"):
        suites.require(SM4_GCM)
