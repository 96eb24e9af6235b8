"""kms: keys and ciphertext formats for the health-record vault.

Key hierarchy:

    root key            held by a RootKeyProvider (`local`: a file sealed by a passphrase; `pkcs11`: an HSM)
      └─ patient KEK    one per patient, versioned, random 256-bit, stored root-wrapped in the KeyStore
           └─ DEK       one per record or file, random 256-bit, stored KEK-wrapped next to the data
                └─ field ciphertexts (kms.envelope) and file blobs (kms.stream)
    service keys        one random 256-bit key per purpose (blind indexes per field kind, pseudonyms, token
                        signing...), root-wrapped in the KeyStore; never derived from one another

The KeyStore is a database apart from the data database, so destroying a patient's KEK (crypto-shredding) cannot
be undone by restoring a data backup. Every ciphertext carries a versioned header (format, suite, key id, key
version), so keys and suites can rotate without a flag day. Every decryption failure is one opaque CryptoError.

Boundaries: kms imports nothing from the project's other packages (vault, api, audit, consent, ocr) and never
sees identities beyond opaque patient ids and purpose names. Key material and plaintext never appear in its
messages, reprs or logs.
"""

from kms import blind_index, envelope, stream, suites
from kms.cache import KeyCache
from kms.errors import CryptoError, KeyDestroyed, KeyStoreError, RootKeyMissing, WrongPassphrase
from kms.keys import DataKey
from kms.keystore import KeyStore
from kms.local import LocalProvider
from kms.manager import KeyManager
from kms.pkcs11 import Pkcs11Provider
from kms.provider import RootKeyProvider
from kms.stream import StreamDecryptor, StreamEncryptor
from kms.suites import AES_256_GCM, SM4_GCM
from kms.wrapping import WrappedKey

__all__ = [
    "AES_256_GCM",
    "SM4_GCM",
    "CryptoError",
    "DataKey",
    "KeyCache",
    "KeyDestroyed",
    "KeyManager",
    "KeyStore",
    "KeyStoreError",
    "LocalProvider",
    "Pkcs11Provider",
    "RootKeyMissing",
    "RootKeyProvider",
    "StreamDecryptor",
    "StreamEncryptor",
    "WrappedKey",
    "WrongPassphrase",
    "blind_index",
    "envelope",
    "stream",
    "suites",
]
