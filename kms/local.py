"""The `local` root-key provider: a versioned root keyset in a file sealed by a passphrase (or, for development only,
a single key given through an environment variable).

Owns: the provider over the sealed key file (its format and file I/O are kms/keyfile.py): creating it (never
overwriting), opening, adding and retiring root versions; wrapping and unwrapping with the root keys.
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

Key file: the sealed root keyset's format (Argon2id-derived AES-256-GCM over a versioned keyset, with bounded KDF
parameters) is defined and documented in kms/keyfile.py, with its atomic write and rotation lock.

Wrapped root output: nonce (12) || ciphertext || tag (16), AES-256-GCM,
AAD = b"hv/root-wrap/v1\\0" || u32 root_version || associated_data.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.errors import CryptoError, KeyStoreError, RootKeyMissing
from kms.keyfile import (
    _MAX_VERSIONS,
    DEFAULT_KDF_PARAMS,
    _check_params,
    _check_passphrase,
    _locked,
    _read,
    _seal,
    _seal_with,
    _Sealing,
    _stamp,
    _unseal,
    _unseal_with,
    _write_new,
)
from kms.provider import RootKeyProvider
from kms.suites import KEY_SIZE, NONCE_SIZE, TAG_SIZE

_WRAP_DOMAIN = b"hv/root-wrap/v1\0"
_T = TypeVar("_T")


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
