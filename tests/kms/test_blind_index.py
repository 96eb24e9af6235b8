import os

import pytest

from kms import blind_index


def test_deterministic_16_bytes():
    key = os.urandom(32)
    a = blind_index.compute(key, kind="phone", normalized_value="13800138000")
    assert len(a) == 16
    assert a == blind_index.compute(key, kind="phone", normalized_value="13800138000")
    assert blind_index.matches(a, blind_index.compute(key, kind="phone", normalized_value="13800138000"))


def test_separates_keys_kinds_and_values():
    key = os.urandom(32)
    base = blind_index.compute(key, kind="phone", normalized_value="1")
    assert base != blind_index.compute(os.urandom(32), kind="phone", normalized_value="1")
    assert base != blind_index.compute(key, kind="id_number", normalized_value="1")
    assert base != blind_index.compute(key, kind="phone", normalized_value="2")
    assert not blind_index.matches(base, blind_index.compute(key, kind="phone", normalized_value="2"))


def test_known_encoding():
    import hashlib
    import hmac

    key = bytes(range(32))
    expected = hmac.new(key, b"hv/bidx/v1\0phone\x0013800138000", hashlib.sha256).digest()[:16]
    assert blind_index.compute(key, kind="phone", normalized_value="13800138000") == expected


def test_refuses_short_key_and_ambiguous_kind():
    with pytest.raises(ValueError):
        blind_index.compute(os.urandom(31), kind="phone", normalized_value="1")
    with pytest.raises(ValueError):
        blind_index.compute(os.urandom(32), kind="pho\0ne", normalized_value="1")
    with pytest.raises(ValueError):
        blind_index.compute(os.urandom(32), kind="", normalized_value="1")
