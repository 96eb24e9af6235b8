"""The `local` root-key provider: a versioned root keyset in a file sealed by a passphrase (or, for development only,
a single key given through an environment variable).

Owns: the sealed key file format, its creation (never overwriting), opening, and adding a root version; wrapping and
unwrapping with the root keys.
Never: writes a root key unsealed, puts the passphrase or any key byte in a message, or overwrites an existing key
file on create (losing it would shred every patient at once).

Key file (integers big-endian):

    offset  size  field
    0       4     magic            b"HVRK"
    4       1     format_version   u8, = 1
    5       1     kdf_id           u8, 1 = Argon2id
    6       4     t                u32, Argon2 iterations (1..64)
    10      4     m                u32, Argon2 memory in KiB (8*p .. 1 GiB)
    14      4     p                u32, Argon2 lanes (1..64)
    18      16    salt
    34      12    nonce
    46      n+16  sealed           AES-256-GCM(key = Argon2id(passphrase, salt, t, m, p) -> 32 B,
                                               nonce, payload, AAD = bytes 0..45)
    payload: count u32 (1..10000) || count x (version u32 || key 32 B), versions strictly increasing

The KDF parameters are authenticated (they are in the AAD), but they are also read before the passphrase can be
checked, so they are bounded: a damaged or hostile file cannot make open() allocate gigabytes or spin for minutes.
Defaults: t=3, m=64 MiB, p=4 (about 0.1 s on the target machine), paid once per process start.

Wrapped root output: nonce (12) || ciphertext || tag (16), AES-256-GCM,
AAD = b"hv/root-wrap/v1\\0" || u32 root_version || associated_data.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from kms.errors import CryptoError, KeyStoreError, RootKeyMissing, WrongPassphrase
from kms.provider import RootKeyProvider
from kms.suites import KEY_SIZE, NONCE_SIZE, TAG_SIZE

MAGIC = b"HVRK"
FILE_FORMAT = 1
KDF_ARGON2ID = 1
DEFAULT_KDF_PARAMS = {"t": 3, "m": 64 * 1024, "p": 4}
SALT_SIZE = 16
_HEAD = struct.Struct(">4sBBIII16s12s")
HEAD_SIZE = _HEAD.size  # 46
_ENTRY = struct.Struct(">I32s")
_MAX_VERSIONS = 10_000
_MAX_FILE = HEAD_SIZE + 4 + _MAX_VERSIONS * _ENTRY.size + TAG_SIZE
_LIMITS = {"t": (1, 64), "p": (1, 64), "m": (8, 1024 * 1024)}
_WRAP_DOMAIN = b"hv/root-wrap/v1\0"


def _check_params(params: dict) -> dict:
    try:
        t, m, p = int(params["t"]), int(params["m"]), int(params["p"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("kdf_params needs integer t, m (KiB) and p") from None
    for name, value in (("t", t), ("m", m), ("p", p)):
        low, high = _LIMITS[name]
        if not low <= value <= high:
            raise ValueError(f"kdf parameter {name}={value} outside {low}..{high}")
    if m < 8 * p:
        raise ValueError("kdf parameter m must be at least 8*p KiB")
    return {"t": t, "m": m, "p": p}


def _derive(passphrase: bytes, salt: bytes, params: dict) -> AESGCM:
    kdf = Argon2id(salt=salt, length=KEY_SIZE, iterations=params["t"], lanes=params["p"], memory_cost=params["m"])
    return AESGCM(kdf.derive(bytes(passphrase)))


def _check_passphrase(passphrase: bytes) -> None:
    if not isinstance(passphrase, (bytes, bytearray)) or not passphrase:
        raise KeyStoreError("a non-empty passphrase (bytes) is required to seal or open the root key file")


def _seal(keys: dict[int, bytes], passphrase: bytes, params: dict) -> bytes:
    salt, nonce = os.urandom(SALT_SIZE), os.urandom(NONCE_SIZE)
    head = _HEAD.pack(MAGIC, FILE_FORMAT, KDF_ARGON2ID, params["t"], params["m"], params["p"], salt, nonce)
    payload = struct.pack(">I", len(keys)) + b"".join(_ENTRY.pack(v, keys[v]) for v in sorted(keys))
    return head + _derive(passphrase, salt, params).encrypt(nonce, payload, head)


def _unseal(blob: bytes, passphrase: bytes, path: Path) -> tuple[dict[int, bytes], dict]:
    corrupt = KeyStoreError(f"root key file {path} is damaged or not a healthvault root key file")
    if len(blob) < HEAD_SIZE + TAG_SIZE or len(blob) > _MAX_FILE:
        raise corrupt
    magic, fmt, kdf_id, t, m, p, salt, nonce = _HEAD.unpack_from(blob, 0)
    if magic != MAGIC or fmt != FILE_FORMAT or kdf_id != KDF_ARGON2ID:
        raise corrupt
    try:
        params = _check_params({"t": t, "m": m, "p": p})
    except ValueError:
        raise corrupt from None
    try:
        payload = _derive(passphrase, salt, params).decrypt(nonce, blob[HEAD_SIZE:], blob[:HEAD_SIZE])
    except InvalidTag:
        raise WrongPassphrase(
            f"the passphrase does not open the root key file {path} (wrong passphrase, or the file was altered)"
        ) from None
    # Authenticated from here on; still checked, since a bug in an older writer must not become an IndexError.
    if len(payload) < 4:
        raise corrupt
    (count,) = struct.unpack_from(">I", payload, 0)
    if not 1 <= count <= _MAX_VERSIONS or len(payload) != 4 + count * _ENTRY.size:
        raise corrupt
    keys: dict[int, bytes] = {}
    previous = 0
    for i in range(count):
        version, key = _ENTRY.unpack_from(payload, 4 + i * _ENTRY.size)
        if version <= previous:
            raise corrupt
        keys[version] = key
        previous = version
    return keys, params


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(_MAX_FILE + 1)
    except FileNotFoundError:
        raise RootKeyMissing(f"no root key file at {path}: run `healthvault init` first") from None
    except OSError as exc:
        raise KeyStoreError(f"cannot read root key file {path}: {exc.strerror}") from None


def _write_new(path: Path, blob: bytes, *, replace: bool) -> None:
    """Write via a 0600 temp file in the same directory, then link (create) or os.replace (rotate), so a crash
    never leaves a half-written key file under the real name."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=".rootkey-", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic create-if-absent
            except FileExistsError:
                raise KeyStoreError(f"refusing to overwrite the existing root key file {path}") from None
            os.unlink(tmp)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class LocalProvider(RootKeyProvider):
    name = "local"

    def __init__(self, keys: dict[int, bytes]) -> None:
        """Use create/open/from_env_value; this takes ownership of already-unsealed keys."""
        if not keys:
            raise KeyStoreError("a root keyset needs at least one version")
        self._ciphers = {version: AESGCM(bytes(key)) for version, key in keys.items()}
        self._current = max(self._ciphers)

    @classmethod
    def create(cls, path: Path, passphrase: bytes, *, kdf_params: dict | None = None) -> LocalProvider:
        _check_passphrase(passphrase)
        path = Path(path)
        params = _check_params(kdf_params if kdf_params is not None else DEFAULT_KDF_PARAMS)
        if path.exists():
            raise KeyStoreError(f"refusing to overwrite the existing root key file {path}")
        if not path.parent.is_dir():
            raise KeyStoreError(f"directory {path.parent} for the root key file does not exist")
        keys = {1: os.urandom(KEY_SIZE)}
        _write_new(path, _seal(keys, passphrase, params), replace=False)
        return cls(keys)

    @classmethod
    def open(cls, path: Path, passphrase: bytes) -> LocalProvider:
        path = Path(path)
        blob = _read(path)
        _check_passphrase(passphrase)
        keys, _ = _unseal(blob, passphrase, path)
        return cls(keys)

    @classmethod
    def from_env_value(cls, value: str) -> LocalProvider:
        """Development only: the root key in the clear, base64 (URL-safe or standard, padding optional)."""
        text = (value or "").strip().replace("-", "+").replace("_", "/")
        if not text:
            raise RootKeyMissing("the development root key variable is empty")
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raw = None
        if raw is None or len(raw) != KEY_SIZE:
            raise KeyStoreError("the development root key must be base64 of exactly 32 bytes")
        return cls({1: raw})

    def add_version(self, path: Path, passphrase: bytes) -> int:
        """Append a new root version to the sealed file and start wrapping with it.

        The file is re-read and unsealed first, so rotating from a stale process never drops a version another
        process added, and a wrong passphrase fails before anything is written.
        """
        path = Path(path)
        _check_passphrase(passphrase)
        keys, params = _unseal(_read(path), passphrase, path)
        for version in self._ciphers:
            if version not in keys:
                raise KeyStoreError(f"root key file {path} does not hold the versions this process uses")
        version = max(keys) + 1
        keys[version] = os.urandom(KEY_SIZE)
        _write_new(path, _seal(keys, passphrase, params), replace=True)
        self._ciphers = {v: AESGCM(k) for v, k in keys.items()}
        self._current = version
        return version

    # --- RootKeyProvider ------------------------------------------------------------------------------------------
    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self._ciphers))

    def current_version(self) -> int:
        return self._current

    @staticmethod
    def _aad(version: int, associated_data: bytes) -> bytes:
        return _WRAP_DOMAIN + struct.pack(">I", version) + bytes(associated_data)

    def wrap(self, plaintext_key: bytes, associated_data: bytes) -> tuple[int, bytes]:
        version = self._current
        nonce = os.urandom(NONCE_SIZE)
        return version, nonce + self._ciphers[version].encrypt(nonce, bytes(plaintext_key),
                                                                self._aad(version, associated_data))

    def unwrap(self, root_version: int, wrapped: bytes, associated_data: bytes) -> bytes:
        cipher = self._ciphers.get(root_version)
        if cipher is None or len(wrapped) < NONCE_SIZE + TAG_SIZE:
            raise CryptoError()
        try:
            return cipher.decrypt(bytes(wrapped[:NONCE_SIZE]), bytes(wrapped[NONCE_SIZE:]),
                                  self._aad(root_version, associated_data))
        except (InvalidTag, ValueError):
            raise CryptoError() from None

    def __repr__(self) -> str:
        return f"LocalProvider(versions={list(self.versions)})"
