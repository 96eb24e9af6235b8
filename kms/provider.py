"""The seam between kms and whatever guards the root key.

Owns: the contract every root-key provider meets (local sealed file now; a PKCS#11 HSM later), so KeyManager never
knows which one it talks to.
Never: exposes root key bytes. A provider wraps and unwraps; the root key itself stays inside it (inside the HSM,
for hardware providers).

Contract:
- `current_version()` is the root version new wraps use; older versions keep unwrapping until re-wrapped.
- `wrap(key, ad)` returns (root_version, wrapped); `unwrap(root_version, wrapped, ad)` reverses it and raises
  kms.errors.CryptoError on any failure (unknown version, damaged bytes, different associated data).
- Associated data is authenticated, never secret: callers put identities there (patient id, key version, purpose).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class RootKeyProvider(Protocol):
    name: str

    def current_version(self) -> int: ...

    def wrap(self, plaintext_key: bytes, associated_data: bytes) -> tuple[int, bytes]: ...

    def unwrap(self, root_version: int, wrapped: bytes, associated_data: bytes) -> bytes: ...
