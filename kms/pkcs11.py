"""The `pkcs11` root-key provider: versioned AES-256 root keys that never leave a PKCS#11 token (an HSM; SoftHSM2 in
tests and CI), used through python-pkcs11.

Owns: finding, checking, creating (never overwriting), adding and retiring the root key objects in the token; wrapping
and unwrapping with them inside the token. The one logged-in session per token per process and the lock that
serialises every call into the module are kms/pkcs11_session.py's.
Never: reads, exports or logs key bytes (the keys are created sensitive and non-extractable, and a key that is not
is refused); puts the PIN in a message, a repr or a log; reports why an unwrap failed (one opaque CryptoError).

Root key objects (one per version, all with the same label):

    CKA_CLASS = CKO_SECRET_KEY, CKA_KEY_TYPE = CKK_AES, CKA_VALUE_LEN = 32, CKA_LABEL = <key_label>,
    CKA_ID = u32 big-endian root version (1, 2, ...), CKA_TOKEN = CKA_PRIVATE = CKA_SENSITIVE = true,
    CKA_EXTRACTABLE = false, CKA_ENCRYPT = CKA_DECRYPT = true, CKA_WRAP = CKA_UNWRAP = CKA_SIGN = CKA_VERIFY =
    CKA_DERIVE = false, CKA_MODIFIABLE = false. Generated inside the token (C_GenerateKey, CKM_AES_KEY_GEN).

The newest version wraps; older ones keep unwrapping until retired. On open, every object with the label must be such
a key (AES-256, sensitive, non-extractable, encrypt+decrypt, CKA_ID exactly 4 bytes >= 1, no version twice), else the
provider refuses to start: a root key someone created extractable is a key that may already have been copied.

Wrapped root output (same layout and AAD binding as the local provider; the key inside the token differs):

    offset  size  field
    0       12    nonce            random (os.urandom), one per wrap
    12      n     ciphertext       CKM_AES_GCM encrypt in the token, 128-bit tag
    12+n    16    tag
    AAD = b"hv/root-wrap/v1\\0" || u32 root_version || associated_data
    n = len(plaintext key), 1..1024; an unwrap input outside 12+16+1 .. 12+16+1024 bytes is refused before any call.

Random 96-bit nonces under one key are safe for about 2^32 wraps; a root rotation (add_version) starts a new key.

Concurrency. python-pkcs11 initialises the module with C_Initialize(NULL), which by the PKCS#11 spec tells the module
the application will not call it from several threads, and SoftHSM2 then disables its internal locking: two threads in
the module at once, even on separate sessions, have crashed the process (shared/MEASURED-LIMITS.md §3). So every call
into a module holds that module's process-wide lock, and one logged-in session per token is shared under it (a
guarded pool of one: more sessions add no throughput when calls are serial). Login state is per application and
token in PKCS#11, which is another reason to share: a second C_Login fails with CKR_USER_ALREADY_LOGGED_IN, and a
C_Logout from one session would log out all. A provider opened with a different PIN than the one this process logged
in with is refused (compared through a keyed digest, never stored in the clear beyond the session's need to log in
again). A session the token dropped (closed, logged out, handle invalid) is reopened once and the call retried.
Versions added or retired by another process (the `keys` CLI while the service runs) are seen by an unwrap that
names an unknown version (token re-read at most once a second) and by the next wrap after 10 s (so new wraps move to
a new root version within 10 s of a rotation anywhere).
The session belongs to the process that opened it: after fork, open the provider again in the child.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any, TypeVar

from kms import pkcs11_session
from kms.errors import CryptoError, KeyStoreError, RootKeyMissing
from kms.pkcs11_session import TokenLink
from kms.provider import RootKeyProvider
from kms.suites import KEY_SIZE, NONCE_SIZE, TAG_SIZE

try:  # a declared dependency; imported softly so the error names what is missing
    import pkcs11 as _p11
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
    from pkcs11 import exceptions as _p11e
    from pkcs11.mechanisms import GCMParams
except ImportError:  # pragma: no cover - exercised only on a broken install
    _p11 = None  # type: ignore[assignment]  # a broken install: _open() names what is missing

_WRAP_DOMAIN = b"hv/root-wrap/v1\0"
_T = TypeVar("_T")
_ID = struct.Struct(">I")
MAX_WRAP_INPUT = 1024
_MIN_WRAPPED = NONCE_SIZE + TAG_SIZE + 1
_MAX_WRAPPED = NONCE_SIZE + TAG_SIZE + MAX_WRAP_INPUT
_MAX_VERSION = 0xFFFFFFFF
_REFRESH_INTERVAL = 1.0  # seconds between token re-reads triggered by an unknown root version
_WRAP_REFRESH_INTERVAL = 10.0  # a wrap re-reads the versions when the last read is older than this

_KEY_ATTRS = ("KEY_TYPE", "VALUE_LEN", "SENSITIVE", "EXTRACTABLE", "ENCRYPT", "DECRYPT", "TOKEN")


class Pkcs11Provider(RootKeyProvider):
    name = "pkcs11"

    def __init__(self, link: TokenLink, key_label: str) -> None:
        """Use open(); this takes one reference on an already logged-in token link."""
        self._link = link
        self._key_label = key_label
        self._keys: dict[int, Any] = {}
        self._generation = -1
        self._current = 0
        self._last_refresh = 0.0
        self._closed = False

    # --- opening --------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, *, module: str | None, token_label: str | None, pin: str | bytes | None,
             key_label: str = "healthvault-root", create: bool = False) -> Pkcs11Provider:
        """Log in to the token and find the root key versions labelled `key_label`.

        With create=True (used by `healthvault init` only), generate version 1 when the token holds none; an existing
        key is never replaced. Raises RootKeyMissing when there is no root key and create is False, WrongPassphrase on
        a wrong PIN, KeyStoreError on anything else an operator must fix (module, token, a non-conforming key).
        """
        if not isinstance(key_label, str) or not key_label or len(key_label) > 64:
            raise KeyStoreError("pkcs11_key_label must be a non-empty label of at most 64 characters")
        token = pkcs11_session.link(module, token_label, pin)
        provider = cls(token, key_label)
        try:
            token.run(provider._reload)
            if not provider._keys:
                if not create:
                    raise RootKeyMissing(f"no root key labelled {key_label!r} in PKCS#11 token {token_label!r}: run "
                                         "`healthvault init` first")
                provider._generate_next(first=True)
        except BaseException:
            provider.close()
            raise
        return provider

    def close(self) -> None:
        """Drop this provider's reference; the session closes (and logs out) when the last one goes."""
        if not self._closed:
            self._closed = True
            self._keys = {}
            pkcs11_session.release(self._link)

    def __repr__(self) -> str:
        return (f"Pkcs11Provider(token={self._link.token_label!r}, key_label={self._key_label!r}, "
                f"versions={sorted(self._keys)})")

    # --- key objects ----------------------------------------------------------------------------------------------
    def _find(self, session: Any) -> dict[int, Any]:
        found: dict[int, Any] = {}
        where = f"PKCS#11 token {self._link.token_label!r}"
        for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: self._key_label}):
            key_id = obj[Attribute.ID]
            if not isinstance(key_id, (bytes, bytearray)) or len(key_id) != _ID.size:
                raise KeyStoreError(f"an object labelled {self._key_label!r} in {where} has a CKA_ID that is not a "
                                    "4-byte root version: refusing to guess which key is the root key")
            (version,) = _ID.unpack(bytes(key_id))
            if version < 1:
                raise KeyStoreError(f"an object labelled {self._key_label!r} in {where} has root version 0")
            if version in found:
                raise KeyStoreError(f"root key {self._key_label!r} version {version} appears twice in {where}")
            attrs = obj.get_attributes([getattr(Attribute, a) for a in _KEY_ATTRS])
            values = {a: attrs.get(getattr(Attribute, a)) for a in _KEY_ATTRS}
            problems = []
            if values["KEY_TYPE"] != KeyType.AES or values["VALUE_LEN"] != KEY_SIZE:
                problems.append("not an AES-256 key")
            if values["SENSITIVE"] is not True:
                problems.append("not sensitive")
            if values["EXTRACTABLE"] is not False:
                problems.append("extractable")
            if values["ENCRYPT"] is not True or values["DECRYPT"] is not True:
                problems.append("not allowed to encrypt and decrypt")
            if values["TOKEN"] is not True:
                problems.append("not a token object")
            if problems:
                raise KeyStoreError(f"root key {self._key_label!r} version {version} in {where} is "
                                    f"{', '.join(problems)}: refusing to use it")
            found[version] = obj
        return found

    def _reload(self, session: Any, generation: int) -> None:
        keys = self._find(session)
        self._keys = keys
        self._generation = generation
        self._current = max(keys) if keys else 0
        self._last_refresh = time.monotonic()

    def _key(self, session: Any, generation: int, version: int, *, refresh_on_miss: bool) -> Any:
        if generation != self._generation:
            self._reload(session, generation)
        key = self._keys.get(version)
        if key is None and refresh_on_miss and time.monotonic() - self._last_refresh >= _REFRESH_INTERVAL:
            # Another process may have added a version (rotation from the CLI while the service runs).
            self._reload(session, generation)
            key = self._keys.get(version)
        return key

    def _generate_next(self, *, first: bool = False) -> int:
        def generate(session: Any, generation: int) -> int:
            self._reload(session, generation)
            if first and self._keys:
                return self._current  # created meanwhile (another process ran init): never overwrite
            version = self._current + 1
            if version > _MAX_VERSION:
                raise KeyStoreError("no root version numbers left")
            session.generate_key(
                KeyType.AES, KEY_SIZE * 8, id=_ID.pack(version), label=self._key_label, store=True,
                template={Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                          Attribute.EXTRACTABLE: False, Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
                          Attribute.WRAP: False, Attribute.UNWRAP: False, Attribute.SIGN: False,
                          Attribute.VERIFY: False, Attribute.DERIVE: False, Attribute.MODIFIABLE: False})
            # A process racing on the same token may have created the same version: _find refuses duplicates, so
            # the loser's key is found and destroyed here and the operator retries.
            same = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                             Attribute.LABEL: self._key_label, Attribute.ID: _ID.pack(version)}))
            if len(same) != 1:
                raise KeyStoreError(f"another process created root version {version} at the same time: retry")
            self._reload(session, generation)
            return version

        try:
            return self._link.run(generate)
        except _p11e.PKCS11Error as exc:
            raise KeyStoreError(f"PKCS#11 token {self._link.token_label!r} refused to generate a root key "
                                f"({type(exc).__name__})") from None

    # --- rotation -------------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the versions from the token (another process may have added or retired one)."""
        self._link.run(self._reload)

    def versions(self) -> tuple[int, ...]:
        self.refresh()
        return tuple(sorted(self._keys))

    def add_version(self) -> int:
        """Generate the next root version inside the token; it becomes current at once and is returned."""
        return self._generate_next()

    def retire_version(self, version: int) -> None:
        """Destroy an old root version in the token. The caller must first have re-wrapped everything it wrapped."""
        def destroy(session: Any, generation: int) -> None:
            self._reload(session, generation)
            if version not in self._keys:
                raise KeyStoreError(f"root key {self._key_label!r} has no version {version}")
            if version == self._current:
                raise KeyStoreError(f"refusing to retire root version {version}: it is the current one (add a "
                                    "version and re-wrap first)")
            self._keys[version].destroy()
            self._reload(session, generation)

        try:
            self._link.run(destroy)
        except _p11e.PKCS11Error as exc:
            raise KeyStoreError(f"PKCS#11 token {self._link.token_label!r} refused to destroy root version "
                                f"{version} ({type(exc).__name__})") from None

    def describe(self) -> list[dict[str, Any]]:
        """Per version: the security attributes the token reports (no key material), for status and doctor."""
        wanted = ("SENSITIVE", "EXTRACTABLE", "ALWAYS_SENSITIVE", "NEVER_EXTRACTABLE", "LOCAL", "TOKEN",
                  "VALUE_LEN")

        def read(session: Any, generation: int) -> list[dict[str, Any]]:
            self._reload(session, generation)
            rows: list[dict[str, Any]] = []
            for version in sorted(self._keys):
                attrs = self._keys[version].get_attributes([getattr(Attribute, a) for a in wanted])
                rows.append({"version": version, "current": version == self._current,
                             **{a.lower(): attrs.get(getattr(Attribute, a)) for a in wanted}})
            return rows

        return self._link.run(read)

    # --- RootKeyProvider ------------------------------------------------------------------------------------------
    def current_version(self) -> int:
        return self._current

    @staticmethod
    def _aad(version: int, associated_data: bytes) -> bytes:
        return _WRAP_DOMAIN + _ID.pack(version) + bytes(associated_data)

    def wrap(self, plaintext_key: bytes, associated_data: bytes) -> tuple[int, bytes]:
        if (not isinstance(plaintext_key, (bytes, bytearray, memoryview))
                or not 1 <= len(plaintext_key) <= MAX_WRAP_INPUT):
            raise ValueError(f"a root-wrapped key is 1..{MAX_WRAP_INPUT} bytes")
        plaintext = bytes(plaintext_key)

        def encrypt(session: Any, generation: int) -> tuple[int, bytes]:
            if generation != self._generation or time.monotonic() - self._last_refresh >= _WRAP_REFRESH_INTERVAL:
                self._reload(session, generation)  # a root version added by another process wraps from now on
            version = self._current
            key = self._keys.get(version)
            if key is None:
                raise CryptoError()
            nonce = os.urandom(NONCE_SIZE)
            sealed = key.encrypt(plaintext, mechanism=Mechanism.AES_GCM,
                                 mechanism_param=GCMParams(nonce, self._aad(version, associated_data), 128))
            if len(sealed) != len(plaintext) + TAG_SIZE:
                raise CryptoError()
            return version, nonce + bytes(sealed)

        try:
            return self._link.run(encrypt)
        except (CryptoError, KeyStoreError, _p11e.PKCS11Error):
            raise CryptoError() from None

    def unwrap(self, root_version: int, wrapped: bytes, associated_data: bytes) -> bytes:
        if (not isinstance(root_version, int) or not 1 <= root_version <= _MAX_VERSION
                or not isinstance(wrapped, (bytes, bytearray, memoryview))
                or not _MIN_WRAPPED <= len(wrapped) <= _MAX_WRAPPED):
            raise CryptoError()
        blob = bytes(wrapped)
        nonce, sealed = blob[:NONCE_SIZE], blob[NONCE_SIZE:]

        def decrypt(session: Any, generation: int) -> bytes:
            key = self._key(session, generation, root_version, refresh_on_miss=True)
            if key is None:
                raise CryptoError()
            return bytes(key.decrypt(sealed, mechanism=Mechanism.AES_GCM,
                                     mechanism_param=GCMParams(nonce, self._aad(root_version, associated_data), 128)))

        try:
            plaintext = self._link.run(decrypt)
        except (CryptoError, KeyStoreError, _p11e.PKCS11Error):
            raise CryptoError() from None
        if len(plaintext) != len(sealed) - TAG_SIZE:
            raise CryptoError()
        return bytes(plaintext)
