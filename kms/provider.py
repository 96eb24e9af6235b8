"""The seam between kms and whatever guards the root key.

Owns: the contract every root-key provider meets (`local`: a sealed key file; `pkcs11`: non-extractable keys in a
PKCS#11 token), so KeyManager and the rotation tools never know which one they talk to.
Never: exposes root key bytes. A provider wraps and unwraps; the root key itself stays inside it (inside the HSM,
for hardware providers).

Contract:
- `current_version()` is the root version new wraps use; older versions keep unwrapping until re-wrapped.
- `wrap(key, ad)` returns (root_version, wrapped); `unwrap(root_version, wrapped, ad)` reverses it and raises
  kms.errors.CryptoError on any failure (unknown version, damaged bytes, different associated data).
- Associated data is authenticated, never secret: callers put identities there (patient id, key version, purpose).
  A provider must bind the root version too (both built-in providers authenticate
  b"hv/root-wrap/v1\\0" || u32 root_version || associated_data), so a wrapped key cannot be replayed under another
  version's number.
- Rotation: `versions()` lists the versions the provider can unwrap with (ascending; the last is current);
  `add_version()` creates a new version, makes it current at once (the next wrap uses it) and returns its number;
  `retire_version(v)` destroys an old version for good and refuses the current one. The provider cannot know what
  still references a version: the caller (rewrap / `keys` tooling) retires a version only after the key store holds
  nothing wrapped under it. Operator failures in these three raise kms.errors.KeyStoreError with a readable message.
  A provider that cannot rotate inherits the defaults below, which refuse loudly instead of doing nothing.

Plugging in a cloud KMS or HashiCorp Vault Transit (interface only; no client ships until it is tested against the
real service). Such a provider implements the same five methods over the service's envelope API:
- wrap: the service's Encrypt with the key's name, the plaintext key and the full AAD above as the authenticated
  context (Vault Transit: `POST transit/encrypt/<name>` with `associated_data` on an aes256-gcm96 key and
  `key_version` pinned to the current version; AWS KMS: `Encrypt` with an EncryptionContext carrying the AAD,
  base64-encoded; Google Cloud KMS: `encrypt` with `additionalAuthenticatedData`). Store the service's ciphertext as
  `wrapped` (bounded in length, as here) and the provider's own root version as `root_version`.
- unwrap: the service's Decrypt with the same AAD; every error (denied, not found, bad tag, throttled after retries)
  becomes one CryptoError.
- versions / add_version / retire_version: Transit's key versions map one to one (`rotate`, `min_decryption_version`,
  `trim`); for services whose key versions are opaque (AWS), keep a small versioned table mapping root_version to
  key ARN/version, where add_version creates or rotates the key and retire_version schedules its deletion.
- Credentials come from the environment or a file, like the PKCS#11 PIN, never from the command line; the client
  must be safe to call from several threads (FastAPI runs sync endpoints in a thread pool).
See docs/kms-providers.md.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class RootKeyProvider(Protocol):
    name: str

    def current_version(self) -> int: ...

    def wrap(self, plaintext_key: bytes, associated_data: bytes) -> tuple[int, bytes]: ...

    def unwrap(self, root_version: int, wrapped: bytes, associated_data: bytes) -> bytes: ...

    def versions(self) -> tuple[int, ...]:
        """Root versions this provider can unwrap with, ascending; the last one is current."""
        raise NotImplementedError(f"{type(self).__name__} does not list root versions")

    def add_version(self) -> int:
        """Create a new root version, make it current, and return its number."""
        raise NotImplementedError(f"{type(self).__name__} cannot add a root version")

    def retire_version(self, version: int) -> None:
        """Destroy an old root version (never the current one); the caller checked that nothing references it."""
        raise NotImplementedError(f"{type(self).__name__} cannot retire a root version")
