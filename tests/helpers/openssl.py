"""The OpenSSL command line as the independent SM2 verifier of checkpoints (COMPLIANCE CRY-1)."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from audit.verify import parse_vkey
from kms import sm2


def _openssl_sm2() -> str:
    """The OpenSSL command line with SM2 (the independent tool of COMPLIANCE CRY-1): required in CI."""
    from tests.conftest import IN_CI

    openssl = shutil.which("openssl")
    listing = subprocess.run([openssl, "list", "-signature-algorithms"], capture_output=True,
                             text=True) if openssl else None
    if listing is None or "SM2" not in listing.stdout:
        (pytest.fail if IN_CI else pytest.skip)("no openssl command line with SM2 on this machine")
    return openssl


def openssl_verify(tmp_path: Path, public_key: bytes, message: bytes, signature: bytes) -> bool:
    """The OpenSSL command line's verdict on an SM2 signature r || s: SM3 digest, distid 1234567812345678."""
    openssl = _openssl_sm2()
    spki = bytes.fromhex("3059301306072a8648ce3d020106082a811ccf5501822d034200") + public_key
    (tmp_path / "pub.pem").write_text("-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(spki).decode()
                                      + "-----END PUBLIC KEY-----\n")
    (tmp_path / "sig.der").write_bytes(sm2.raw_to_der(signature))
    (tmp_path / "message").write_bytes(message)
    done = subprocess.run([openssl, "dgst", "-sm3", "-verify", str(tmp_path / "pub.pem"), "-sigopt",
                           "distid:1234567812345678", "-signature", str(tmp_path / "sig.der"),
                           str(tmp_path / "message")], capture_output=True, text=True)
    return done.returncode == 0 and "Verified OK" in done.stdout


def openssl_verifies_note(tmp_path: Path, vkey: str, note: str) -> bool:
    """Check one signed note (its last signature line) with the OpenSSL command line."""
    body, sig_line = note[:note.rfind("\n\n") + 1], note[note.rfind("\n\n") + 2:]
    raw = base64.b64decode(sig_line.rsplit(" ", 1)[1])[4:]
    return openssl_verify(tmp_path, parse_vkey(vkey).public_key, body.encode("utf-8"), raw)
