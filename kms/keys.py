"""The in-memory form of a symmetric data key.

Owns: a key's identity (key_id, version, suite), its bytes, and the one AEAD object built from them. The suite fixes
the key size (kms.suites.key_size: 32 bytes for AES-256-GCM, 16 for SM4-GCM) and the AEAD (AESGCM or SM4GCM).
Never: shows its bytes in repr, str, pickles or exceptions. `material()` exists only so a key can be wrapped by a
higher key; everything else encrypts through the cached AEAD object, because building that object costs as much as
a whole small-field encryption (MEASURED-LIMITS §1).

Identity: `key_id` is 16 bytes and `version` a u32; both are written into ciphertext headers, so they are what
equality means. `wipe()` is best effort (Python may hold other copies; the AEAD object keeps its own key schedule),
but it drops this object's references and zeroes the one mutable copy we own.
"""

from __future__ import annotations

import os
from typing import NoReturn

from kms import suites
from kms.suites import AES_256_GCM

KEY_ID_SIZE = 16
MAX_VERSION = 0xFFFFFFFF


class DataKey:
    __slots__ = ("__weakref__", "_aead", "_ident", "_material", "key_id", "suite", "version")

    key_id: bytes
    version: int
    suite: int
    _aead: suites.Aead | None
    _ident: bytes
    _material: bytearray

    def __init__(self, material: suites.Buffer, *, key_id: bytes, version: int, suite: int,
                 _aead: suites.Aead | None = None) -> None:
        if not isinstance(key_id, (bytes, bytearray)) or len(key_id) != KEY_ID_SIZE:
            raise ValueError("key_id must be 16 bytes")
        if not isinstance(version, int) or not 0 <= version <= MAX_VERSION:
            raise ValueError("version must fit in a u32")
        if not suites.is_supported(suite):
            raise ValueError(f"cipher suite {suite!r} is not implemented")
        if len(material) != suites.key_size(suite):
            raise ValueError(f"a data key of suite {suite} is {suites.key_size(suite)} bytes")
        self.key_id = bytes(key_id)
        self.version = version
        self.suite = suite
        self._material = bytearray(material)
        # suite u8 || key_id 16 || version u32 BE: how every kms header names this key, built once so a decrypt
        # can check "is this my ciphertext?" with one bytes comparison.
        self._ident = bytes((suite,)) + self.key_id + version.to_bytes(4, "big")
        self._aead = _aead if _aead is not None else suites.new_aead(suite, material)

    @classmethod
    def generate(cls, *, key_id: bytes | None = None, version: int = 1, suite: int = AES_256_GCM) -> DataKey:
        return cls(os.urandom(suites.key_size(suite)), key_id=os.urandom(KEY_ID_SIZE) if key_id is None else key_id,
                   version=version, suite=suite)

    @classmethod
    def from_bytes(cls, material: bytes, *, key_id: bytes, version: int = 1, suite: int = AES_256_GCM) -> DataKey:
        return cls(material, key_id=key_id, version=version, suite=suite)

    def material(self) -> bytes:
        """The raw key, for wrapping under a higher key only."""
        material = bytes(self._material)
        if self._aead is None:  # checked after the copy: see wipe() for the order that makes this race-free
            raise ValueError("this DataKey has been wiped")
        return material

    def wipe(self) -> None:
        # Disable first, zero second: a concurrent material()/clone that copied before the zeroing still sees the
        # key as wiped when it re-checks, so nobody can walk away with a half-zeroed copy.
        self._aead = None
        self._material[:] = bytes(len(self._material))  # same-length slice assignment overwrites in place

    @property
    def wiped(self) -> bool:
        return self._aead is None

    # --- kms-internal -------------------------------------------------------------------------------------------
    def _cipher(self) -> suites.Aead | None:
        """The cached AEAD object, or None once wiped (callers turn that into their own error)."""
        return self._aead

    def _clone(self) -> DataKey:
        """An independent handle sharing the (immutable) AEAD object.

        The cache wipes the handles it owns on eviction; callers get clones, so an eviction never pulls a key out
        from under a request that is still using it, and a caller's wipe() never damages the cache.
        """
        aead = self._aead
        if aead is None:
            raise ValueError("this DataKey has been wiped")
        clone = object.__new__(DataKey)  # fields were validated when self was built; skip __init__ on the hot path
        clone.key_id, clone.version, clone.suite, clone._ident = self.key_id, self.version, self.suite, self._ident
        clone._material = bytearray(self._material)
        clone._aead = aead
        if self._aead is None:  # wiped while we copied (see wipe())
            raise ValueError("this DataKey has been wiped")
        return clone

    # --- identity -----------------------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DataKey):
            return NotImplemented
        return (self.key_id, self.version) == (other.key_id, other.version)

    def __hash__(self) -> int:
        return hash((self.key_id, self.version))

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id.hex()}, version={self.version}, suite={self.suite})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("DataKey cannot be pickled: key material must not leave the process in the clear")
