"""The pkcs11 root-key provider on a real SoftHSM2 token (tests/helpers/softhsm.py): wrap/unwrap inside the token, the
non-extractable key, rotation, the operator errors, a lost session, and many threads at once. Nothing is mocked.

Skipped when SoftHSM2 is not installed, except in CI (CI=true), where its absence fails."""

from __future__ import annotations

import os
import random
import struct
import threading
import uuid

import pytest

from kms import CryptoError, KeyCache, KeyDestroyed, KeyManager, KeyStore, KeyStoreError, RootKeyMissing, envelope
from kms import pkcs11 as p11mod
from kms.errors import WrongPassphrase
from kms.pkcs11 import Pkcs11Provider
from kms.pkcs11_session import module_lock
from kms.provider import RootKeyProvider
from tests.helpers import softhsm

from .conftest import IN_CI

NONCE, TAG = 12, 16


@pytest.fixture(scope="module")
def hsm() -> softhsm.SoftHsm:
    return softhsm.required(in_ci=IN_CI)


@pytest.fixture
def key_label() -> str:
    return "t-" + uuid.uuid4().hex[:16]


def _open(hsm, key_label, *, create=True, pin=None, token=None, module=None) -> Pkcs11Provider:
    return Pkcs11Provider.open(module=hsm.module if module is None else module,
                               token_label=hsm.token_label if token is None else token,
                               pin=hsm.pin if pin is None else pin, key_label=key_label, create=create)


@pytest.fixture
def p11(hsm, key_label):
    provider = _open(hsm, key_label)
    yield provider
    provider.close()


def _raw_session(hsm):
    """A second session of this process on the test token, for what the provider must not allow (already logged in
    through the provider's session: PKCS#11 login state is per application and token). Callers hold module_lock."""
    import pkcs11

    token = pkcs11.lib(os.path.realpath(hsm.module)).get_token(token_label=hsm.token_label)
    return token.open(rw=True)


def test_round_trip_and_wire_format(p11):
    assert isinstance(p11, RootKeyProvider) and p11.name == "pkcs11"
    assert p11.current_version() == 1 and p11.versions() == (1,)
    key, ad = os.urandom(32), b"hv/kek/v1\0\x00\x00\x00\x01alice"
    version, wrapped = p11.wrap(key, ad)
    assert version == 1 and len(wrapped) == NONCE + 32 + TAG
    assert p11.unwrap(version, wrapped, ad) == key
    _, again = p11.wrap(key, ad)
    assert again != wrapped and again[:NONCE] != wrapped[:NONCE]  # a fresh nonce per wrap
    assert p11.unwrap(1, bytearray(wrapped), ad) == key
    # The documented format, checked inside the token without the provider: AES-GCM, nonce first, tag last,
    # AAD = domain || u32 root version || associated data.
    from pkcs11 import Attribute, Mechanism, ObjectClass
    from pkcs11.mechanisms import GCMParams

    with module_lock(p11._link.module_path):
        session = _raw_session(softhsm.process_softhsm())
        try:
            [root] = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                               Attribute.LABEL: p11._key_label}))
            aad = b"hv/root-wrap/v1\0" + struct.pack(">I", 1) + ad
            assert root.decrypt(wrapped[NONCE:], mechanism=Mechanism.AES_GCM,
                                mechanism_param=GCMParams(wrapped[:NONCE], aad, 128)) == key
        finally:
            session.close()
    for bad in (b"", bytearray(), b"x" * (p11mod.MAX_WRAP_INPUT + 1), "text"):
        with pytest.raises(ValueError):
            p11.wrap(bad, ad)


def test_every_unwrap_failure_is_one_opaque_error(p11):
    key, ad = os.urandom(32), b"purpose"
    version, wrapped = p11.wrap(key, ad)
    cases = [(version, wrapped, b"purposE"), (version, wrapped, b""), (2, wrapped, ad), (0, wrapped, ad),
             (-1, wrapped, ad), (2**32, wrapped, ad), ("1", wrapped, ad), (None, wrapped, ad),
             (version, wrapped[:-1], ad), (version, wrapped + b"\0", ad), (version, b"", ad),
             (version, wrapped[:NONCE + TAG], ad), (version, os.urandom(len(wrapped)), ad),
             (version, os.urandom(p11mod.NONCE_SIZE + TAG + p11mod.MAX_WRAP_INPUT + 1), ad),
             (version, "not bytes", ad)]
    cases += [(version, bytes(wrapped[:i]) + bytes([wrapped[i] ^ 1]) + bytes(wrapped[i + 1:]), ad)
              for i in range(len(wrapped))]
    for root_version, blob, aad in cases:
        with pytest.raises(CryptoError) as info:
            p11.unwrap(root_version, blob, aad)
        assert str(info.value) == "decryption failed" and info.value.__cause__ is None


def test_open_without_a_key_is_root_key_missing_and_create_never_overwrites(hsm, key_label):
    with pytest.raises(RootKeyMissing) as info:
        _open(hsm, key_label, create=False)
    assert key_label in str(info.value) and "healthvault init" in str(info.value)
    first = _open(hsm, key_label, create=True)
    try:
        version, wrapped = first.wrap(b"k" * 32, b"ad")
        second = _open(hsm, key_label, create=True)  # init run again: finds version 1, creates nothing
        try:
            assert second.versions() == (1,) and second.unwrap(version, wrapped, b"ad") == b"k" * 32
        finally:
            second.close()
        third = _open(hsm, key_label, create=False)
        assert third.unwrap(version, wrapped, b"ad") == b"k" * 32
        third.close()
    finally:
        first.close()


def test_root_key_is_non_extractable_and_extraction_fails(hsm, p11, key_label):
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

    [row] = p11.describe()
    assert row["version"] == 1 and row["current"] is True
    assert row["sensitive"] is True and row["extractable"] is False
    assert row["always_sensitive"] is True and row["never_extractable"] is True
    assert row["local"] is True and row["token"] is True and row["value_len"] == 32
    with module_lock(hsm.module):
        session = _raw_session(hsm)
        try:
            [key] = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: key_label}))
            with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                key[Attribute.VALUE]
            with pytest.raises(pkcs11.exceptions.PKCS11Error):  # may not become extractable (nor be modified)
                key[Attribute.EXTRACTABLE] = True
            wrapping = session.generate_key(KeyType.AES, 256, store=False, template={
                Attribute.WRAP: True, Attribute.UNWRAP: True, Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False})
            with pytest.raises(pkcs11.exceptions.PKCS11Error):  # CKR_KEY_UNEXTRACTABLE
                wrapping.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP)
            assert key[Attribute.EXTRACTABLE] is False
            wrapping.destroy()
        finally:
            session.close()


def _create_raw_key(hsm, label: str, key_id: bytes, **template) -> None:
    from pkcs11 import Attribute, KeyType

    with module_lock(hsm.module):
        session = _raw_session(hsm)
        try:
            session.generate_key(KeyType.AES, 256, id=key_id, label=label, store=True,
                                 template={getattr(Attribute, k): v for k, v in template.items()})
        finally:
            session.close()


def test_refuses_a_root_key_that_does_not_conform(hsm, p11, key_label):
    extractable = "x-" + uuid.uuid4().hex[:12]
    _create_raw_key(hsm, extractable, struct.pack(">I", 1), SENSITIVE=True, EXTRACTABLE=True)
    with pytest.raises(KeyStoreError) as info:
        _open(hsm, extractable, create=False)
    assert "extractable" in str(info.value) and "refusing" in str(info.value)
    not_sensitive = "x-" + uuid.uuid4().hex[:12]
    _create_raw_key(hsm, not_sensitive, struct.pack(">I", 1), SENSITIVE=False, EXTRACTABLE=False)
    with pytest.raises(KeyStoreError, match="not sensitive"):
        _open(hsm, not_sensitive, create=False)
    odd_id = "x-" + uuid.uuid4().hex[:12]
    _create_raw_key(hsm, odd_id, b"v1", SENSITIVE=True, EXTRACTABLE=False)
    with pytest.raises(KeyStoreError, match="4-byte root version"):
        _open(hsm, odd_id, create=True)  # never "repairs" by creating another key next to it
    # A foreign object under the provider's own label stops it at the next re-read too.
    _create_raw_key(hsm, key_label, struct.pack(">I", 7), SENSITIVE=True, EXTRACTABLE=True)
    with pytest.raises(KeyStoreError, match="extractable"):
        p11.versions()


def test_rotation_adds_current_versions_keeps_old_ones_and_retires(hsm, p11, key_label, monkeypatch):
    old_key, ad = os.urandom(32), b"svc"
    _, old_wrapped = p11.wrap(old_key, ad)
    other = _open(hsm, key_label, create=False)  # other holders of the same root key, opened before the rotation
    third = _open(hsm, key_label, create=False)
    try:
        assert p11.add_version() == 2
        assert p11.current_version() == 2 and p11.versions() == (1, 2)
        version, new_wrapped = p11.wrap(b"n" * 32, ad)
        assert version == 2
        assert p11.unwrap(1, old_wrapped, ad) == old_key
        with pytest.raises(CryptoError):  # the version is authenticated: a v1 wrap does not open as v2
            p11.unwrap(2, old_wrapped, ad)
        monkeypatch.setattr(p11mod, "_REFRESH_INTERVAL", 0.0)
        assert other.unwrap(2, new_wrapped, ad) == b"n" * 32  # an unknown version makes it re-read the token
        monkeypatch.setattr(p11mod, "_WRAP_REFRESH_INTERVAL", 0.0)
        assert third.current_version() == 1 and third.wrap(b"t" * 32, ad)[0] == 2  # a wrap re-reads when stale
        with pytest.raises(KeyStoreError, match="current"):
            p11.retire_version(2)
        with pytest.raises(KeyStoreError, match="no version 9"):
            p11.retire_version(9)
        p11.retire_version(1)
        assert p11.versions() == (2,) and other.versions() == (2,)
        with pytest.raises(CryptoError):
            p11.unwrap(1, old_wrapped, ad)
        with pytest.raises(CryptoError):
            other.unwrap(1, old_wrapped, ad)
        assert p11.add_version() == 3 and other.versions() == (2, 3)
        assert [r["version"] for r in p11.describe()] == [2, 3]
    finally:
        other.close()
        third.close()


def test_operator_errors_are_clear_and_never_show_the_pin(hsm, key_label, tmp_path):
    with pytest.raises(KeyStoreError, match="pkcs11_module"):
        _open(hsm, key_label, module="")
    with pytest.raises(KeyStoreError, match="not found"):
        _open(hsm, key_label, module=str(tmp_path / "libnothere.so"))
    not_a_library = tmp_path / "libbroken.so"
    not_a_library.write_bytes(b"not an ELF file")
    with pytest.raises(KeyStoreError, match="cannot load PKCS#11 module"):
        _open(hsm, key_label, module=str(not_a_library))
    with pytest.raises(KeyStoreError, match="no PKCS#11 token labelled 'no-such-token'"):
        _open(hsm, key_label, token="no-such-token")
    with pytest.raises(KeyStoreError, match="pkcs11_token_label"):
        Pkcs11Provider.open(module=hsm.module, token_label=None, pin=hsm.pin, key_label=key_label)
    for empty in ("", b""):
        with pytest.raises(KeyStoreError, match="PIN"):
            _open(hsm, key_label, pin=empty)
    wrong = "wrong-pin-5555"
    # A token this process has not logged into: the token itself rejects the PIN (C_Login).
    with pytest.raises(WrongPassphrase) as info:
        _open(hsm, key_label, token=softhsm.PIN_TOKEN, pin=wrong)
    assert "wrong PIN" in str(info.value) and wrong not in str(info.value) and softhsm.USER_PIN not in str(info.value)
    # A token this process is logged into already (PKCS#11 would not even look at a second PIN): still refused.
    holder = _open(hsm, key_label)
    try:
        with pytest.raises(WrongPassphrase) as info:
            _open(hsm, key_label, pin=wrong)
        assert wrong not in str(info.value) and softhsm.USER_PIN not in str(info.value)
        assert hsm.pin not in repr(holder) and hsm.pin not in repr(holder._link)
        assert key_label in repr(holder) and "versions=[1]" in repr(holder)
    finally:
        holder.close()
    with pytest.raises(KeyStoreError, match="at most 64"):
        _open(hsm, "l" * 65)


def test_a_lost_session_is_reopened(p11, hsm):
    key, ad = os.urandom(32), b"ad"
    version, wrapped = p11.wrap(key, ad)
    with module_lock(hsm.module):
        p11._link._session.close()  # the token dropped us (C_Logout + C_CloseSession): handles are now invalid
    assert p11.unwrap(version, wrapped, ad) == key
    assert p11.unwrap(*p11.wrap(key, ad), ad) == key


def test_many_threads_share_the_token_without_crashing(hsm, p11, key_label):
    """8 threads x 400 wrap+unwrap through two providers sharing one session, while two more re-read the key objects
    and another opens and closes providers; without the module lock this crashes SoftHSM2 (malloc heap corruption,
    SIGSEGV) or returns garbage errors."""
    second = _open(hsm, key_label, create=False)
    errors: list[BaseException] = []
    done = threading.Event()
    counts = [0] * 8

    def worker(index: int) -> None:
        rng = random.Random(index)
        provider = p11 if index % 2 else second
        try:
            for i in range(400):
                key = rng.randbytes(32)
                ad = f"patient-{index}-{i}".encode()
                version, wrapped = provider.wrap(key, ad)
                other = second if provider is p11 else p11
                assert other.unwrap(version, wrapped, ad) == key
                if i % 50 == 0:
                    with pytest.raises(CryptoError):
                        provider.unwrap(version, wrapped, ad + b"!")
                counts[index] += 1
        except BaseException as exc:
            errors.append(exc)

    def lister(provider) -> None:
        try:
            while not done.is_set():
                assert provider.versions() == (1,)  # object search + attribute reads, in the token
                assert provider.describe()[0]["extractable"] is False
        except BaseException as exc:
            errors.append(exc)

    def opener() -> None:
        try:
            while not done.is_set():
                _open(hsm, key_label, create=False).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    side = [threading.Thread(target=lister, args=(p,)) for p in (p11, second)] + [threading.Thread(target=opener)]
    for t in side + threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    done.set()
    for t in side:
        t.join(timeout=30)
    second.close()
    assert not errors, errors[:3]
    assert counts == [400] * 8


def test_key_manager_runs_unchanged_on_the_token(hsm, p11, key_label, store, store_url, clock):
    manager = KeyManager(p11, store, cache=KeyCache(max_age=300, max_uses=1000), clock=clock)
    assert manager.create_patient_key("alice") == 1
    dek, wrapped = manager.new_data_key("alice")
    ct = envelope.encrypt(dek, b"blood type O", b"ad")
    blind = manager.service_key("blind-index/id_number")
    restarted_provider = _open(hsm, key_label, create=False)
    try:
        restarted = KeyManager(restarted_provider, KeyStore(store_url), cache=KeyCache(), clock=clock)
        opened = restarted.open_data_key("alice", wrapped)
        assert envelope.decrypt(opened, ct, b"ad") == b"blood type O"
        assert restarted.service_key("blind-index/id_number") == blind
        assert [row.root_version for row in store.patient_keks("alice")] == [1]
        manager.destroy_patient_keys("alice")
        with pytest.raises(KeyDestroyed):
            KeyManager(restarted_provider, KeyStore(store_url), cache=KeyCache(), clock=clock).open_data_key(
                "alice", wrapped)
    finally:
        restarted_provider.close()
