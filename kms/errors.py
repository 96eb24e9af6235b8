"""The two families of kms failure, kept apart on purpose.

Owns: the exception types every kms module raises.
Never: carries key material, plaintext, passphrases or the reason a decryption failed. A caller that could tell
"bad tag" from "bad header" from "wrong key" would hold a decryption oracle, so every such failure is one
`CryptoError` whose text is always the same. Operator problems (a missing key file, a wrong passphrase, a broken key
store) are a different family, `KeyStoreError`, with messages meant to be read by a human at start-up.
"""

from __future__ import annotations

_OPAQUE = "decryption failed"


class CryptoError(Exception):
    """Any decrypt, unwrap or ciphertext-format failure; indistinguishable by design."""

    def __init__(self, *_ignored: object) -> None:
        # Arguments are dropped so no code path can smuggle detail (or secrets) into the message.
        super().__init__(_OPAQUE)

    def __str__(self) -> str:
        return _OPAQUE

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class KeyDestroyed(CryptoError):
    """The patient's KEK was crypto-shredded.

    A subclass of CryptoError so code that only cares "can I read this?" needs one except clause, while erasure-aware
    code can tell a shredded patient from tampering.
    """


class KeyStoreError(Exception):
    """Operator-facing: the key file, passphrase or key store is not usable. Messages never contain secrets."""


class RootKeyMissing(KeyStoreError):
    """No root key: the sealed file (or the development environment variable) is absent."""


class WrongPassphrase(KeyStoreError):
    """The sealed root key file did not open with the passphrase given."""
