import base64
import os
import stat
import struct

import pytest

from kms import CryptoError, KeyStoreError, LocalProvider, RootKeyMissing, WrongPassphrase
from kms.keyfile import HEAD_SIZE

from .conftest import CHEAP_KDF, PASSPHRASE


def test_create_open_wrap_unwrap(root_path):
    created = LocalProvider.create(root_path, PASSPHRASE, kdf_params=CHEAP_KDF)
    assert created.name == "local" and created.current_version() == 1
    version, wrapped = created.wrap(b"k" * 32, b"patient-1")
    assert version == 1 and len(wrapped) == 12 + 32 + 16
    opened = LocalProvider.open(root_path, PASSPHRASE)
    assert opened.unwrap(version, wrapped, b"patient-1") == b"k" * 32


def test_file_is_private_and_never_overwritten(root_path):
    LocalProvider.create(root_path, PASSPHRASE, kdf_params=CHEAP_KDF)
    assert stat.S_IMODE(root_path.stat().st_mode) == 0o600
    before = root_path.read_bytes()
    with pytest.raises(KeyStoreError, match="refusing to overwrite"):
        LocalProvider.create(root_path, PASSPHRASE, kdf_params=CHEAP_KDF)
    assert root_path.read_bytes() == before
    assert [p.name for p in root_path.parent.iterdir()] == [root_path.name]  # no temp files left


def test_default_kdf_params_are_recorded_in_the_header(root_path):
    LocalProvider.create(root_path, PASSPHRASE)
    magic, fmt, kdf, t, m, p = struct.unpack_from(">4sBBIII", root_path.read_bytes(), 0)
    assert (magic, fmt, kdf, t, m, p) == (b"HVRK", 1, 1, 3, 64 * 1024, 4)
    assert LocalProvider.open(root_path, PASSPHRASE).current_version() == 1


def test_wrong_passphrase_is_clear_and_does_not_echo_it(root_path):
    LocalProvider.create(root_path, PASSPHRASE, kdf_params=CHEAP_KDF)
    wrong = b"Tr0ub4dor&3-not-the-one"
    with pytest.raises(WrongPassphrase) as info:
        LocalProvider.open(root_path, wrong)
    message = str(info.value)
    assert "passphrase" in message and str(root_path) in message
    assert wrong.decode() not in message and PASSPHRASE.decode() not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_missing_file(tmp_path):
    with pytest.raises(RootKeyMissing, match="no root key"):
        LocalProvider.open(tmp_path / "absent.key", PASSPHRASE)


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated_head", "bad_magic", "huge_memory", "zero_t",
                                    "bad_format"])
def test_corrupt_file_is_key_store_error(root_path, damage):
    LocalProvider.create(root_path, PASSPHRASE, kdf_params=CHEAP_KDF)
    blob = bytearray(root_path.read_bytes())
    if damage == "empty":
        blob = bytearray()
    elif damage == "garbage":
        blob = bytearray(os.urandom(300))
    elif damage == "truncated_head":
        blob = blob[:HEAD_SIZE - 3]
    elif damage == "bad_magic":
        blob[0:4] = b"NOPE"
    elif damage == "huge_memory":
        blob[10:14] = struct.pack(">I", 2**32 - 1)
    elif damage == "zero_t":
        blob[6:10] = bytes(4)
    elif damage == "bad_format":
        blob[4] = 9
    root_path.write_bytes(bytes(blob))
    with pytest.raises(KeyStoreError) as info:
        LocalProvider.open(root_path, PASSPHRASE)
    assert not isinstance(info.value, WrongPassphrase)
    assert "damaged" in str(info.value)


def test_altered_sealed_body_or_params_does_not_open(root_path):
    LocalProvider.create(root_path, PASSPHRASE, kdf_params=CHEAP_KDF)
    original = root_path.read_bytes()
    for position in (6 + 3, 18, 40, HEAD_SIZE + 1, len(original) - 1):  # t, salt, nonce, body, tag
        blob = bytearray(original)
        blob[position] ^= 0x01
        root_path.write_bytes(bytes(blob))
        with pytest.raises(KeyStoreError):
            LocalProvider.open(root_path, PASSPHRASE)


def test_empty_passphrase_refused(root_path):
    with pytest.raises(KeyStoreError):
        LocalProvider.create(root_path, b"", kdf_params=CHEAP_KDF)


def test_bad_kdf_params_refused(root_path):
    for params in ({"t": 0, "m": 1024, "p": 1}, {"t": 1, "m": 4, "p": 1}, {"t": 1}, {"t": 1, "m": 8, "p": 4}):
        with pytest.raises(ValueError):
            LocalProvider.create(root_path, PASSPHRASE, kdf_params=params)
    assert not root_path.exists()


def test_unwrap_failures_are_crypto_errors(provider):
    version, wrapped = provider.wrap(os.urandom(32), b"ad")
    for args in ((version, wrapped, b"other ad"), (version + 1, wrapped, b"ad"), (version, wrapped[:20], b"ad"),
                 (version, b"", b"ad"), (version, wrapped[:-1] + bytes([wrapped[-1] ^ 1]), b"ad")):
        with pytest.raises(CryptoError):
            provider.unwrap(*args)


def test_add_version_rotates_and_keeps_old_versions(root_path, provider):
    v1, old = provider.wrap(b"a" * 32, b"ad")
    assert provider.add_version(root_path, PASSPHRASE) == 2
    assert provider.current_version() == 2
    v2, new = provider.wrap(b"b" * 32, b"ad")
    assert (v1, v2) == (1, 2)
    reopened = LocalProvider.open(root_path, PASSPHRASE)
    assert reopened.versions() == (1, 2)
    assert reopened.unwrap(1, old, b"ad") == b"a" * 32
    assert reopened.unwrap(2, new, b"ad") == b"b" * 32
    with pytest.raises(CryptoError):  # the version is bound into the AAD
        reopened.unwrap(1, new, b"ad")
    assert stat.S_IMODE(root_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in root_path.parent.iterdir()) == [root_path.name]


def test_add_version_with_wrong_passphrase_changes_nothing(root_path, provider):
    before = root_path.read_bytes()
    with pytest.raises(WrongPassphrase):
        provider.add_version(root_path, b"wrong")
    assert root_path.read_bytes() == before and provider.current_version() == 1


def test_from_env_value_accepts_both_alphabets():
    raw = bytes([0xFB, 0xFF] * 16)  # encodes with + and / (std) or - and _ (urlsafe)
    values = [base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
              base64.urlsafe_b64encode(raw).decode().rstrip("="), "  " + base64.b64encode(raw).decode() + "\n"]
    wrapped = None
    for value in values:
        provider = LocalProvider.from_env_value(value)
        if wrapped is None:
            wrapped = provider.wrap(b"x" * 32, b"ad")
        assert provider.unwrap(*wrapped, b"ad") == b"x" * 32


@pytest.mark.parametrize("value", ["", "not base64!!", base64.b64encode(b"short").decode(),
                                   base64.b64encode(os.urandom(33)).decode(), "ünïcode"])
def test_from_env_value_malformed(value):
    with pytest.raises(KeyStoreError) as info:
        LocalProvider.from_env_value(value)
    if value:
        assert value not in str(info.value)


def test_repr_hides_keys(provider):
    assert repr(provider) == "LocalProvider(versions=[1])"
