import pickle

import pytest

from kms import AES_256_GCM, CryptoError, DataKey, envelope
from kms.suites import SM4_GCM


def test_generate_shape():
    key = DataKey.generate()
    assert len(key.key_id) == 16 and key.version == 1 and key.suite == AES_256_GCM
    assert len(key.material()) == 32
    assert DataKey.generate().material() != key.material()


def test_from_bytes_and_equality_by_id_and_version():
    material = bytes(range(32))
    a = DataKey.from_bytes(material, key_id=b"A" * 16)
    b = DataKey.from_bytes(bytes(32), key_id=b"A" * 16)
    c = DataKey.from_bytes(material, key_id=b"A" * 16, version=2)
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert a.material() == material


def test_repr_shows_only_the_id():
    material = bytes(range(100, 132))
    key = DataKey.from_bytes(material, key_id=b"\x01" * 16)
    text = repr(key) + str(key)
    assert "01" * 16 in text
    assert material.hex() not in text and repr(material) not in text


def test_cannot_be_pickled():
    with pytest.raises(TypeError):
        pickle.dumps(DataKey.generate())


@pytest.mark.parametrize("kwargs", [
    dict(material=bytes(32), key_id=b"short"),
    dict(material=bytes(31), key_id=bytes(16)),
    dict(material=bytes(32), key_id=bytes(16), version=-1),
    dict(material=bytes(32), key_id=bytes(16), version=2**32),
    dict(material=bytes(32), key_id=bytes(16), suite=SM4_GCM),
    dict(material=bytes(32), key_id=bytes(16), suite=99),
])
def test_invalid_keys_refused(kwargs):
    material = kwargs.pop("material")
    with pytest.raises(ValueError):
        DataKey.from_bytes(material, **kwargs)


def test_wipe_zeroes_and_disables():
    key = DataKey.generate()
    ct = envelope.encrypt(key, b"x", b"ad")
    key.wipe()
    assert key.wiped
    assert bytes(key._material) == bytes(32)
    with pytest.raises(ValueError):
        key.material()
    with pytest.raises(ValueError):
        envelope.encrypt(key, b"x", b"ad")
    with pytest.raises(CryptoError):
        envelope.decrypt(key, ct, b"ad")


def test_clone_is_independent_of_the_original_wipe():
    key = DataKey.generate()
    clone = key._clone()
    ct = envelope.encrypt(key, b"payload", b"ad")
    key.wipe()
    assert envelope.decrypt(clone, ct, b"ad") == b"payload"
