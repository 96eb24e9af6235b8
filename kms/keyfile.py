"""The sealed root key file of the `local` provider: its format, sealing and unsealing, and safe file I/O.

Owns: the key file format below, the Argon2id KDF and its bounded parameters, sealing a keyset under a sealing key
(`_Sealing`, derived once from the passphrase) and unsealing it, reading the file (size-bounded), writing it
atomically (0600 temp file, fsync, link or rename, fsync of the directory) and the exclusive lock that rotations
take. kms/local.py (LocalProvider) is its only user.
Never: writes a root key unsealed, puts the passphrase or any key byte in a message, overwrites an existing key
file on create, replaces the key file other than atomically, or trusts a length or KDF parameter read from the file
before bounding it.

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
"""

from __future__ import annotations

import fcntl
import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from kms.errors import KeyStoreError, RootKeyMissing, WrongPassphrase
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
