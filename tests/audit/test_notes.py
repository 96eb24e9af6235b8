"""C2SP signed notes and tlog checkpoints: public known answers, round trips and every way a note may be wrong.

Known answers: the example of golang.org/x/mod/sumdb/note (package doc and note_test.go: the PeterNeumann key, whose
private key is published, so our signer must reproduce the Go output byte for byte), the example of
c2sp.org/signed-note (example.com/foo) and the example body of c2sp.org/tlog-checkpoint (behind-the-sofa).
"""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import Signer, make_checkpoint_body
from audit.verify import (
    Checkpoint,
    VerificationError,
    note_key_id,
    open_note,
    parse_checkpoint,
    parse_vkey,
    verify_note,
)

GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = GO_TEXT + ("\n\u2014 PeterNeumann "
                     "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")
C2SP_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
C2SP_NOTE = ("This is an example message.\n\n\u2014 example.com/foo "
             "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n")
SOFA_BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SOFA_NOTE = SOFA_BODY + ("\n\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5"
                         "/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n")


def go_signer() -> Signer:
    _, _, name, key_id, key64 = GO_SKEY.split("+", 4)
    raw = base64.b64decode(key64)
    assert raw[0] == 1 and key_id == "c74f20a3"
    return Signer(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))


def signer(name="log.example/a", seed=5) -> Signer:
    return Signer(name, Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


def test_go_sumdb_note_example_is_reproduced_byte_for_byte():
    s = go_signer()
    assert s.vkey() == GO_VKEY
    assert s.sign_note(GO_TEXT) == GO_NOTE
    assert open_note(GO_NOTE, GO_VKEY) == GO_TEXT
    assert open_note(GO_NOTE.encode("utf-8"), parse_vkey(GO_VKEY)) == GO_TEXT
    with pytest.raises(VerificationError):
        open_note(GO_NOTE.replace("cryptography", "cryptographY"), GO_VKEY)


def test_c2sp_signed_note_example():
    key = parse_vkey(C2SP_VKEY)
    assert key.name == "example.com/foo" and key.key_id.hex() == "530d903a"
    assert key.public_key.hex() == "e932791ae6e7a840a46164c904786426d5e7821dd8b29a00d61cae72afdd4da4"
    assert note_key_id(key.name, key.public_key) == key.key_id and str(key) == C2SP_VKEY
    assert open_note(C2SP_NOTE, C2SP_VKEY) == "This is an example message.\n"
    with pytest.raises(VerificationError, match="no signature by"):
        open_note(C2SP_NOTE, GO_VKEY)


def test_c2sp_checkpoint_example_parses_and_unknown_signers_do_not_count():
    cp = parse_checkpoint(SOFA_BODY)
    assert (cp.origin, cp.size, cp.root) == ("example.com/behind-the-sofa", 20852163,
                                            base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="))
    assert cp.extensions == () and cp.body == SOFA_BODY
    assert parse_checkpoint(SOFA_NOTE) == cp  # a whole note: signatures dropped, unverified
    with pytest.raises(VerificationError, match="no signature by"):
        verify_note(SOFA_NOTE, C2SP_VKEY)
    # our signature next to a stranger's: the note verifies by ours, the other line is ignored
    s = signer("example.com/behind-the-sofa")
    both = s.sign_note(SOFA_BODY) + SOFA_NOTE[len(SOFA_BODY) + 1:]
    assert verify_note(both, s.vkey()) == cp


def test_checkpoint_round_trip_with_extensions():
    s = signer()
    root = bytes(range(32))
    body = make_checkpoint_body("log.example/a", 42, root, ["chains 3", "t 2026-11-25"])
    assert body == f"log.example/a\n42\n{base64.b64encode(root).decode()}\nchains 3\nt 2026-11-25\n"
    note = s.sign_note(body)
    assert note.startswith(body + "\n\u2014 log.example/a ")
    assert verify_note(note, s.vkey()) == Checkpoint("log.example/a", 42, root, ("chains 3", "t 2026-11-25"), body)


def test_wrong_key_altered_body_altered_signature():
    s, other = signer(), signer(seed=6)
    note = s.sign_note(make_checkpoint_body("log.example/a", 7, bytes(32)))
    with pytest.raises(VerificationError, match="no signature by"):
        verify_note(note, other.vkey())
    with pytest.raises(VerificationError, match="no signature by"):  # same key under another name
        verify_note(note, signer("log.example/b").vkey())
    with pytest.raises(VerificationError, match="invalid signature"):
        verify_note(note.replace("\n7\n", "\n8\n"), s.vkey())
    sig = note.rsplit(" ", 1)[1]
    middle = len(sig) // 2
    altered = sig[:middle] + ("A" if sig[middle] != "A" else "B") + sig[middle + 1:]
    with pytest.raises(VerificationError, match="invalid signature"):
        verify_note(note.replace(sig, altered), s.vkey())


@pytest.mark.parametrize("mangle", [
    lambda n: n[:-1],                                   # no final newline
    lambda n: n.replace("\n\n", "\n"),                  # no blank line before the signatures
    lambda n: n.replace("\u2014 ", "- "),               # not an em dash
    lambda n: n.replace("\u2014 ", "\u2014  "),          # empty key name
    lambda n: n + "stray line\n",                       # unknown line in the signature block
    lambda n: n.replace("=\n", "\n"),                   # bad base64 padding
    lambda n: n[:-10] + "!" + n[-9:],                   # not base64
    lambda n: n.replace("log.example", "log.example\t"),  # control character
    lambda n: n.encode("utf-8")[:-3] + b"\xff\n",        # not UTF-8
    lambda n: n.replace("\u2014 log.example/a ", "\u2014 log.example/a QUJD\n\u2014 log.example/a "),  # too short
])
def test_malformed_notes_are_refused(mangle):
    s = signer()
    note = s.sign_note(make_checkpoint_body("log.example/a", 7, bytes(32)))
    assert verify_note(note, s.vkey())
    with pytest.raises(VerificationError):
        verify_note(mangle(note), s.vkey())


def test_too_many_signature_lines_are_refused():
    s = signer()
    note = s.sign_note(make_checkpoint_body("log.example/a", 7, bytes(32)))
    line = note.split("\n\n", 1)[1]
    with pytest.raises(VerificationError, match="100"):
        verify_note(note + line.replace("log.example/a", "other") * 100, s.vkey())


@pytest.mark.parametrize("body", [
    "origin\n7\n",                                      # no root
    "\n7\n" + base64.b64encode(bytes(32)).decode() + "\n",   # empty origin
    "o\n07\n" + base64.b64encode(bytes(32)).decode() + "\n",  # leading zero
    "o\n+7\n" + base64.b64encode(bytes(32)).decode() + "\n",  # sign
    "o\n1_0\n" + base64.b64encode(bytes(32)).decode() + "\n",  # Python-only digit grouping
    "o\n\u0667\n" + base64.b64encode(bytes(32)).decode() + "\n",  # non-ASCII digit
    "o\n18446744073709551616\n" + base64.b64encode(bytes(32)).decode() + "\n",  # > u64
    "o\n7\n" + base64.b64encode(bytes(31)).decode() + "\n",   # short root
    "o\n7\n" + base64.b64encode(bytes(32)).decode().rstrip("=") + "\n",  # unpadded
    "o\n7\n" + base64.b64encode(bytes(32)).decode(),   # no final newline
])
def test_checkpoint_bodies_follow_the_c2sp_rules(body):
    with pytest.raises(VerificationError):
        parse_checkpoint(body)


@pytest.mark.parametrize("vkey", [
    GO_VKEY.replace("c74f20a3", "c74f20a4"),            # wrong key id
    GO_VKEY.replace("+c74f20a3", "+c74f20a"),            # short key id
    "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space in the name
    GO_VKEY.replace("+ARpc", "+Arpc"),                  # other key bytes
    GO_VKEY[:-4],                                       # truncated
    "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",  # from the Go tests
    "",
])
def test_bad_vkeys_are_refused(vkey):
    with pytest.raises(VerificationError):
        parse_vkey(vkey)


def test_signer_refuses_what_the_verifier_would_refuse():
    s = signer()
    for body in ("no newline", "", "\n", "a\n\nb\n", "bell\x07\n"):
        with pytest.raises(VerificationError):
            s.sign_note(body)
    for name in ("", "with space", "a+b"):
        with pytest.raises(VerificationError):
            Signer(name, Ed25519PrivateKey.generate())
    with pytest.raises(VerificationError):
        make_checkpoint_body("two\nlines", 1, bytes(32))
    with pytest.raises(VerificationError):
        make_checkpoint_body("o", 1, bytes(32), [""])
    assert "PRIVATE" not in repr(s) and s.vkey() in repr(s)
