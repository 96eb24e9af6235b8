import os
import struct

import pytest

from kms import CryptoError, DataKey, envelope

WHERE = dict(table="records", column="title", row_id="row-1", patient_id="patient-1")


def aad(**changes):
    return envelope.field_aad(**{**WHERE, **changes})


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1024, 100_000])
def test_round_trip(size):
    key = DataKey.generate()
    plaintext = os.urandom(size)
    ct = envelope.encrypt(key, plaintext, aad())
    assert len(ct) == envelope.MIN_SIZE + size
    assert envelope.decrypt(key, ct, aad()) == plaintext


def test_layout_and_header():
    key = DataKey.generate(version=7)
    ct = envelope.encrypt(key, b"hello", aad())
    assert ct[0] == 1 and ct[1] == key.suite
    assert ct[2:18] == key.key_id
    assert struct.unpack(">I", ct[18:22])[0] == 7
    header = envelope.header_of(ct)
    assert header == (1, key.suite, key.key_id, 7)
    assert header.key_id == key.key_id and header.key_version == 7


def test_fresh_nonce_each_time():
    key = DataKey.generate()
    a, b = envelope.encrypt(key, b"same", aad()), envelope.encrypt(key, b"same", aad())
    assert a != b and a[22:34] != b[22:34]


@pytest.mark.parametrize("change", [
    dict(row_id="row-2"), dict(column="filename"), dict(patient_id="patient-2"), dict(table="patients"),
])
def test_ciphertext_moved_elsewhere_fails(change):
    key = DataKey.generate()
    ct = envelope.encrypt(key, b"diagnosis", aad())
    with pytest.raises(CryptoError):
        envelope.decrypt(key, ct, aad(**change))


def test_field_aad_is_injective():
    assert envelope.field_aad(table="ab", column="c", row_id="r", patient_id="p") != \
        envelope.field_aad(table="a", column="bc", row_id="r", patient_id="p")
    assert envelope.field_aad(table="t", column="c", row_id="1", patient_id="23") != \
        envelope.field_aad(table="t", column="c", row_id="12", patient_id="3")
    encoded = envelope.field_aad(table="t", column="c", row_id="r", patient_id="p")
    assert encoded.startswith(b"\x00\x0bhv/field/v1\x00\x01t\x00\x01c")
    assert envelope.field_aad(table="病历", column="c", row_id="r", patient_id="p") != encoded


def test_field_aad_part_too_long():
    with pytest.raises(ValueError):
        envelope.field_aad(table="t", column="c", row_id="x" * 70_000, patient_id="p")


def test_bit_flip_in_every_byte_fails():
    key = DataKey.generate()
    ct = envelope.encrypt(key, b"small field", aad())
    for position in range(len(ct)):
        for bit in range(8):
            damaged = bytearray(ct)
            damaged[position] ^= 1 << bit
            with pytest.raises(CryptoError):
                envelope.decrypt(key, bytes(damaged), aad())
            resolver = lambda key_id, version: key
            with pytest.raises(CryptoError):
                envelope.decrypt(resolver, bytes(damaged), aad())


def test_wrong_key_fails():
    key = DataKey.generate()
    ct = envelope.encrypt(key, b"secret", aad())
    with pytest.raises(CryptoError):
        envelope.decrypt(DataKey.generate(), ct, aad())
    same_material_other_id = DataKey.from_bytes(key.material(), key_id=os.urandom(16))
    with pytest.raises(CryptoError):
        envelope.decrypt(same_material_other_id, ct, aad())
    same_material_other_version = DataKey.from_bytes(key.material(), key_id=key.key_id, version=2)
    with pytest.raises(CryptoError):
        envelope.decrypt(same_material_other_version, ct, aad())


def test_resolver_gets_header_identity_and_must_match():
    key = DataKey.generate(version=3)
    ct = envelope.encrypt(key, b"secret", aad())
    seen = []

    def resolver(key_id, version):
        seen.append((key_id, version))
        return key

    assert envelope.decrypt(resolver, ct, aad()) == b"secret"
    assert seen == [(key.key_id, 3)]
    with pytest.raises(CryptoError):
        envelope.decrypt(lambda key_id, version: DataKey.generate(version=3), ct, aad())
    with pytest.raises(CryptoError):
        envelope.decrypt(lambda key_id, version: None, ct, aad())


def test_resolver_error_passes_through():
    ct = envelope.encrypt(DataKey.generate(), b"x", aad())

    class StoreDown(Exception):
        pass

    def resolver(key_id, version):
        raise StoreDown()

    with pytest.raises(StoreDown):
        envelope.decrypt(resolver, ct, aad())


def _malformed(key):
    good = envelope.encrypt(key, b"payload", aad())
    yield b""
    for n in range(1, envelope.MIN_SIZE):
        yield good[:n]
        yield os.urandom(n)
    yield bytes([2]) + good[1:]  # unknown format version
    yield good[:1] + bytes([2]) + good[2:]  # SM4 suite: reserved, not implemented
    yield good[:1] + bytes([255]) + good[2:]
    yield good + b"\x00"
    yield good[:-1]
    yield bytearray(os.urandom(200))
    yield memoryview(os.urandom(64))
    yield bytes(1000)


@pytest.mark.parametrize("use_resolver", [False, True])
def test_malformed_input_is_always_crypto_error(use_resolver):
    key = DataKey.generate()
    target = (lambda key_id, version: key) if use_resolver else key
    for bad in _malformed(key):
        with pytest.raises(CryptoError) as info:
            envelope.decrypt(target, bad, aad())
        assert type(info.value) is CryptoError
        assert str(info.value) == "decryption failed"
        assert info.value.__cause__ is None


def test_non_bytes_input_is_crypto_error():
    key = DataKey.generate()
    for bad in (None, "text", 12345, ["list"]):
        with pytest.raises(CryptoError):
            envelope.decrypt(key, bad, aad())
        with pytest.raises(CryptoError):
            envelope.header_of(bad)


def test_header_of_short_or_unknown_format():
    key = DataKey.generate()
    good = envelope.encrypt(key, b"", aad())
    for bad in (b"", good[:49], bytes([9]) + good[1:]):
        with pytest.raises(CryptoError):
            envelope.header_of(bad)


def test_failure_never_shows_plaintext_or_key():
    key = DataKey.generate()
    ct = envelope.encrypt(key, b"HIV positive", aad())
    with pytest.raises(CryptoError) as info:
        envelope.decrypt(key, ct, aad(row_id="other"))
    text = str(info.value) + repr(info.value)
    assert "HIV" not in text and key.material().hex() not in text


def test_accepts_bytearray_and_memoryview_ciphertext():
    key = DataKey.generate()
    ct = envelope.encrypt(key, b"value", aad())
    assert envelope.decrypt(key, bytearray(ct), aad()) == b"value"
    assert envelope.decrypt(key, memoryview(ct), aad()) == b"value"
