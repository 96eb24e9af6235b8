import ast
from pathlib import Path

import kms
from kms import CryptoError, KeyDestroyed, KeyStoreError, RootKeyMissing, WrongPassphrase

KMS_DIR = Path(kms.__file__).parent
FORBIDDEN = {"vault", "api", "audit", "consent", "ocr"}


def test_crypto_error_text_is_always_the_same():
    assert str(CryptoError()) == "decryption failed"
    assert str(CryptoError("secret detail", b"\x00key")) == "decryption failed"
    assert "secret" not in repr(CryptoError("secret detail"))
    assert str(KeyDestroyed("patient 1")) == "decryption failed"


def test_hierarchy():
    assert issubclass(KeyDestroyed, CryptoError)
    assert issubclass(RootKeyMissing, KeyStoreError)
    assert issubclass(WrongPassphrase, KeyStoreError)
    assert not issubclass(KeyStoreError, CryptoError)
    assert not issubclass(CryptoError, KeyStoreError)


def test_kms_imports_no_other_project_package():
    for path in KMS_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_every_module_has_a_docstring_saying_what_it_never_does():
    for path in KMS_DIR.glob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, path.name
        assert "Never" in doc or "never" in doc, path.name


def test_public_names():
    for name in ("CryptoError", "KeyStoreError", "RootKeyMissing", "WrongPassphrase", "KeyDestroyed", "DataKey",
                 "KeyCache", "KeyStore", "KeyManager", "WrappedKey", "LocalProvider", "RootKeyProvider",
                 "AES_256_GCM", "envelope", "stream", "blind_index"):
        assert hasattr(kms, name), name
    assert kms.AES_256_GCM == 1
