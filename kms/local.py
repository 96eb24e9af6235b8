"""The `local` root-key provider: a versioned root keyset in a file sealed by a passphrase (or, for development only,
a single key given through an environment variable).

Owns: the sealed key file format, its creation (never overwriting), opening, adding and retiring root versions;
wrapping and unwrapping with the root keys.
Never: writes a root key unsealed, puts the passphrase or any key byte in a message, overwrites an existing key
file on create (losing it would shred every patient at once), keeps the passphrase string after open, or replaces
the key file other than atomically (a crash leaves the old file or the new one, never half of either).

Rotation (`add_version()`, `retire_version(v)`): a provider opened from (or created at) a file remembers the path and
the sealing key derived at open (an AES-GCM object, not the passphrase), so rotation needs no passphrase again. Each
change re-reads the file under an exclusive lock (flock on the file, re-checked against the path's inode), unseals
it with the remembered key (a file re-sealed under another passphrase is refused), changes the keyset, seals it with
a fresh nonce (same salt and KDF parameters: same key), writes a 0600 temp file, fsyncs it, renames it over the
old file and fsyncs the directory. Versions only grow; a retired version number is never reused. Another process
that still holds an older keyset notices the change on its next wrap (the file is stat'ed at most once a second) or
when asked to unwrap a version it does not know, and reloads with its own remembered key.

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
import fcntl
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

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
_T = TypeVar("_T")


def _check_params(params: dict[str, Any]) -> dict[str, int]:
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


def _derive(passphrase: bytes, salt: bytes, params: dict[str, int]) -> AESGCM:
    kdf = Argon2id(salt=salt, length=KEY_SIZE, iterations=params["t"], lanes=params["p"], memory_cost=params["m"])
    return AESGCM(kdf.derive(bytes(passphrase)))


def _check_passphrase(passphrase: bytes) -> None:
    if not isinstance(passphrase, (bytes, bytearray)) or not passphrase:
        raise KeyStoreError("a non-empty passphrase (bytes) is required to seal or open the root key file")


class _Sealing:
    """The key that seals one key file (derived once, at open or create) with the salt and KDF parameters it was
    derived with. Holds no passphrase."""

    __slots__ = ("aead", "params", "salt")

    def __init__(self, aead: AESGCM, salt: bytes, params: dict[str, int]) -> None:
        self.aead, self.salt, self.params = aead, salt, params

    def __repr__(self) -> str:
        return "_Sealing(<hidden>)"


def _seal_with(keys: dict[int, bytes], sealing: _Sealing) -> bytes:
    params, nonce = sealing.params, os.urandom(NONCE_SIZE)
    head = _HEAD.pack(MAGIC, FILE_FORMAT, KDF_ARGON2ID, params["t"], params["m"], params["p"], sealing.salt, nonce)
    payload = struct.pack(">I", len(keys)) + b"".join(_ENTRY.pack(v, keys[v]) for v in sorted(keys))
    return head + sealing.aead.encrypt(nonce, payload, head)


def _seal(keys: dict[int, bytes], passphrase: bytes, params: dict[str, int]) -> tuple[bytes, _Sealing]:
    salt = os.urandom(SALT_SIZE)
    sealing = _Sealing(_derive(passphrase, salt, params), salt, params)
    return _seal_with(keys, sealing), sealing


def _parse_head(blob: bytes, path: Path) -> tuple[dict[str, int], bytes, bytes]:
    """(params, salt, nonce) of a key file, bounded before anything expensive happens."""
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
    return params, salt, nonce


def _unseal(blob: bytes, passphrase: bytes, path: Path) -> tuple[dict[int, bytes], _Sealing]:
    params, salt, _ = _parse_head(blob, path)
    sealing = _Sealing(_derive(passphrase, salt, params), salt, params)
    return _unseal_with(blob, sealing, path), sealing


def _unseal_with(blob: bytes, sealing: _Sealing, path: Path) -> dict[int, bytes]:
    corrupt = KeyStoreError(f"root key file {path} is damaged or not a healthvault root key file")
    params, salt, nonce = _parse_head(blob, path)
    if salt != sealing.salt or params != sealing.params:
        raise WrongPassphrase(f"the root key file {path} was re-sealed under another passphrase since this process "
                              "opened it: open it again")
    try:
        payload = sealing.aead.decrypt(nonce, blob[HEAD_SIZE:], blob[:HEAD_SIZE])
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
    return keys


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


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on the key file as it is now; re-taken when a concurrent rotation renamed a new file over
    the one we locked (a lock on a replaced inode protects nothing)."""
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise RootKeyMissing(f"no root key file at {path}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                yield
                return
        finally:
            os.close(fd)  # closing drops the lock
    raise KeyStoreError(f"root key file {path} keeps changing; try again")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class LocalProvider(RootKeyProvider):
    name = "local"
    _REFRESH_EVERY = 1.0  # seconds between stat() checks for a keyset another process changed

    def __init__(self, keys: dict[int, bytes], *, _path: Path | None = None, _sealing: _Sealing | None = None) -> None:
        """Use create/open/from_env_value; this takes ownership of already-unsealed keys."""
        if not keys:
            raise KeyStoreError("a root keyset needs at least one version")
        # (ciphers by version, current version), swapped as one object so a concurrent reader never pairs a new
        # current version with an old cipher table.
        self._keyset: tuple[dict[int, AESGCM], int] = ({}, 0)
        self._install(keys)
        self._path = Path(_path) if _path is not None else None
        self._sealing = _sealing
        self._stamp = _stamp(self._path) if self._path is not None else None
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    @classmethod
    def create(cls, path: Path, passphrase: bytes, *, kdf_params: dict[str, Any] | None = None) -> LocalProvider:
        _check_passphrase(passphrase)
        path = Path(path)
        params = _check_params(kdf_params if kdf_params is not None else DEFAULT_KDF_PARAMS)
        if path.exists():
            raise KeyStoreError(f"refusing to overwrite the existing root key file {path}")
        if not path.parent.is_dir():
            raise KeyStoreError(f"directory {path.parent} for the root key file does not exist")
        keys = {1: os.urandom(KEY_SIZE)}
        blob, sealing = _seal(keys, passphrase, params)
        _write_new(path, blob, replace=False)
        return cls(keys, _path=path, _sealing=sealing)

    @classmethod
    def open(cls, path: Path, passphrase: bytes) -> LocalProvider:
        path = Path(path)
        blob = _read(path)
        _check_passphrase(passphrase)
        keys, sealing = _unseal(blob, passphrase, path)
        return cls(keys, _path=path, _sealing=sealing)

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

    # --- rotation -------------------------------------------------------------------------------------------------
    def _target(self, path: Path | None, passphrase: bytes | None) -> tuple[Path, bytes | None]:
        if path is None:
            if self._path is None or self._sealing is None:
                raise KeyStoreError("this root key was not opened from a key file (development key from the "
                                    "environment?): it cannot be rotated or retired here")
            return self._path, None
        if passphrase is None:
            raise KeyStoreError("a passphrase is needed with an explicit key file path")
        _check_passphrase(passphrase)
        return Path(path), passphrase

    def _change(self, path: Path | None, passphrase: bytes | None, edit: Callable[[dict[int, bytes]], _T]) -> _T:
        """Re-read, unseal, edit, re-seal and atomically replace the key file under the file lock."""
        target, given = self._target(path, passphrase)
        with self._lock, _locked(target):
            blob = _read(target)
            if given is not None:
                keys, sealing = _unseal(blob, given, target)
            else:
                if self._sealing is None:  # _target() refused this already
                    raise KeyStoreError("this root key was not opened from a key file")
                sealing = self._sealing
                keys = _unseal_with(blob, sealing, target)
            for version in self._keyset[0]:
                if version not in keys and version > max(keys):  # an older file put back: version numbers would clash
                    raise KeyStoreError(f"root key file {target} does not hold the versions this process uses")
            result = edit(keys)
            _write_new(target, _seal_with(keys, sealing), replace=True)
            self._install(keys)
            if target == self._path or self._path is None:
                self._path, self._sealing = target, sealing
                self._stamp = _stamp(target)
        return result

    def _install(self, keys: dict[int, bytes]) -> None:
        self._keyset = ({v: AESGCM(bytes(k)) for v, k in keys.items()}, max(keys))

    def add_version(self, path: Path | None = None, passphrase: bytes | None = None) -> int:
        """Append a new root version to the sealed file and start wrapping with it; returns the new version.

        With no arguments, uses the file and sealing key remembered at open/create. (An explicit path and
        passphrase are still accepted.) The file is re-read first, so rotating from a stale process never drops a
        version another process added, and a wrong passphrase fails before anything is written.
        """

        def edit(keys: dict[int, bytes]) -> int:
            if len(keys) >= _MAX_VERSIONS:
                raise KeyStoreError("the root keyset is full: retire old versions first")
            version = max(keys) + 1
            keys[version] = os.urandom(KEY_SIZE)
            return version

        return self._change(path, passphrase, edit)

    def retire_version(self, version: int) -> None:
        """Remove a root version from the sealed file for good. Refuses the current version and unknown versions.

        The caller (KeyManager) first checks that no wrapped key in the key store still names this version."""

        def edit(keys: dict[int, bytes]) -> None:
            if version not in keys:
                raise KeyStoreError(f"root version {version} is not in the keyset")
            if version == max(keys):
                raise KeyStoreError(f"root version {version} is the current one and cannot be retired")
            del keys[version]

        self._change(None, None, edit)

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the keyset if another process changed the file (rotation, retirement); True if it changed."""
        if self._path is None or self._sealing is None:
            return False
        now = time.monotonic()
        if not force and now - self._checked < self._REFRESH_EVERY:
            return False
        self._checked = now
        stamp = _stamp(self._path)
        if stamp is None or stamp == self._stamp:
            return False
        with self._lock:
            try:
                keys = _unseal_with(_read(self._path), self._sealing, self._path)
            except KeyStoreError:
                return False  # keep serving with what we have; rotation tools report the problem
            self._install(keys)
            self._stamp = stamp
        return True

    # --- RootKeyProvider ------------------------------------------------------------------------------------------
    def versions(self) -> tuple[int, ...]:
        self.refresh()
        return tuple(sorted(self._keyset[0]))

    def current_version(self) -> int:
        self.refresh()
        return self._keyset[1]

    @staticmethod
    def _aad(version: int, associated_data: bytes) -> bytes:
        return _WRAP_DOMAIN + struct.pack(">I", version) + bytes(associated_data)

    def wrap(self, plaintext_key: bytes, associated_data: bytes) -> tuple[int, bytes]:
        self.refresh()
        ciphers, version = self._keyset
        nonce = os.urandom(NONCE_SIZE)
        return version, nonce + ciphers[version].encrypt(nonce, bytes(plaintext_key),
                                                         self._aad(version, associated_data))

    def unwrap(self, root_version: int, wrapped: bytes, associated_data: bytes) -> bytes:
        cipher = self._keyset[0].get(root_version)
        if cipher is None and self.refresh(force=True):
            cipher = self._keyset[0].get(root_version)
        if cipher is None or len(wrapped) < NONCE_SIZE + TAG_SIZE:
            raise CryptoError()
        try:
            return cipher.decrypt(bytes(wrapped[:NONCE_SIZE]), bytes(wrapped[NONCE_SIZE:]),
                                  self._aad(root_version, associated_data))
        except (InvalidTag, ValueError):
            raise CryptoError() from None

    def __repr__(self) -> str:
        return f"LocalProvider(versions={list(self.versions())})"
