"""SM2 checkpoints and SM3 trees: the SM suite's half of the audit trail.

Three independent SM2 implementations meet here: GmSSL (the signer, kms.sm2 through gmssl-pyx), the pure-Python
verifier an assessor reads (audit/verify.py), and the OpenSSL command line. All are checked against the standard's own
examples: GB/T 32918.5-2017 / GM/T 0003.5-2012 Annex A (recommended curve, user id "1234567812345678") and
GB/T 32918.2-2016 Annex A (its 256-bit test curve, user id "ALICE123@YAHOO.COM"), including reproducing the standards'
signatures from their fixed k.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from audit import verify
from audit.bundle import write_bundle
from audit.checkpoint import MerkleLog, Signer, make_checkpoint_body
from audit.verify import (
    SM2_CURVE,
    SM2Curve,
    VerificationError,
    canonical_bytes,
    claims_signer,
    event_hash,
    leaf_data,
    open_note,
    parse_vkey,
    sm2_verify,
    verify_bundle,
    verify_note,
)
from kms import sm2
from kms.sm2 import STANDARD_EXAMPLE, SM2PrivateKey
from tests.helpers.audit_synth import ORIGIN, fixed_signer, make_event
from tests.helpers.openssl import openssl_verifies_note, openssl_verify

ROOT = Path(__file__).resolve().parents[2]

# GB/T 32918.2-2016 Annex A: the digital-signature example on the standard's Fp-256 test curve.
TEST_CURVE = SM2Curve(
    p=0x8542D69E4C044F18E8B92435BF6FF7DE457283915C45517D722EDB8B08F1DFC3,
    a=0x787968B4FA32C3FD2417842E73BBFEFF2F3C848B6831D7E0EC65228B3937E498,
    b=0x63E4C6D3B23B0C849CF84241484BFE48F61D59A5B16BA06E6E12D1DA27C5249A,
    n=0x8542D69E4C044F18E8B92435BF6FF7DD297720630485628D5AE74EE7C32E79B7,
    gx=0x421DEBD61B62EAB6746434EBC3CC315E32220B3BADD50BDC4C4E6C147FEDD43D,
    gy=0x0680512BCBB42C07D47349D2153B70C4E5D7FDFCBFA36EA1A85841B9E46E09A2)
PART2 = {
    "user_id": b"ALICE123@YAHOO.COM",
    "d": 0x128B2FA8BD433C6C068C8D803DFF79792A519A55171B1B650C23661D15897263,
    "x": 0x0AE4C7798AA0F119471BEE11825BE46202BB79E2A5844495E97C04FF4DF2548A,
    "y": 0x7C0240F88F1CD4E16352A73C17B7F16F07353E53A176D684A9FE0C6BB798E857,
    "k": 0x6CB28D99385C175C94F94E934817663FC176D925DD72B727260DBAAE1FB2F96F,
    "za": "F4A38489E32B45B6F876E3AC2168CA392362DC8F23459C1D1146FC3DBFB7BC9A",
    "e": "B524F552CD82B8B028476E005C377FB19A87E6FC682D48BB5D42E3D9B9EFFE76",
    "r": 0x40F1EC59F793D9F49E09DCEF49130D4194F79FB1EED2CAA55BACDB49C4E755D1,
    "s": 0x6FC6DAC32C5D5CF10C77DFB20F7C2EB667A457872FB09EC56327A67EC7DEEBE7,
}
PART5_K = 0x59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21
MESSAGE = b"message digest"


# ---- a textbook signer for the tests only (fixed k, as in the standards' examples) ----------------------------------

def _multiply(k: int, x: int, y: int, curve: SM2Curve) -> tuple[int, int]:
    acc, point = (1, 1, 0), (x, y, 1)
    for bit in bin(k)[2:]:
        acc = verify._ec_double(acc, curve)
        if bit == "1":
            acc = verify._ec_add(acc, point, curve)
    zinv = pow(acc[2], -1, curve.p)
    return acc[0] * zinv * zinv % curve.p, acc[1] * pow(zinv, 3, curve.p) % curve.p


def _public(d: int, curve: SM2Curve) -> bytes:
    x, y = _multiply(d, curve.gx, curve.gy, curve)
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def _sm3(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def textbook_sign(d: int, message: bytes, k: int, curve: SM2Curve = SM2_CURVE,
                  user_id: bytes = verify.SM2_DEFAULT_ID) -> bytes:
    """GB/T 32918.2 §6.1 A1-A7 with a given k."""
    e = int.from_bytes(_sm3(verify._sm2_za(_public(d, curve), user_id, curve) + message), "big")
    x1, _ = _multiply(k, curve.gx, curve.gy, curve)
    r = (e + x1) % curve.n
    s = pow(1 + d, -1, curve.n) * (k - r * d) % curve.n
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# ---- the standards' examples --------------------------------------------------------------------------------------

def test_part5_example_recommended_curve_every_implementation():
    d = int(STANDARD_EXAMPLE["private"], 16)
    public = bytes.fromhex(STANDARD_EXAMPLE["public"])
    signature = bytes.fromhex(STANDARD_EXAMPLE["signature"])
    assert sm2.public_key_of(d) == public == _public(d, SM2_CURVE)
    assert sm2.za(public) == bytes.fromhex(STANDARD_EXAMPLE["za"]) == verify._sm2_za(public, b"1234567812345678",
                                                                                      SM2_CURVE)
    assert textbook_sign(d, MESSAGE, PART5_K) == signature  # the standard's r, s from its k
    assert sm2_verify(public, MESSAGE, signature)            # audit/verify.py (pure Python)
    assert sm2.verify(public, MESSAGE, signature)            # GmSSL
    sm2.self_test()


def test_part2_example_test_curve_in_the_pure_python_verifier():
    curve, ex = TEST_CURVE, PART2
    public = _public(ex["d"], curve)
    assert public == b"\x04" + ex["x"].to_bytes(32, "big") + ex["y"].to_bytes(32, "big")
    za = verify._sm2_za(public, ex["user_id"], curve)
    assert za.hex().upper() == ex["za"]
    assert _sm3(za + MESSAGE).hex().upper() == ex["e"]
    signature = textbook_sign(ex["d"], MESSAGE, ex["k"], curve, ex["user_id"])
    assert signature == ex["r"].to_bytes(32, "big") + ex["s"].to_bytes(32, "big")
    assert sm2_verify(public, MESSAGE, signature, ex["user_id"], curve)
    assert not sm2_verify(public, MESSAGE, signature, verify.SM2_DEFAULT_ID, curve)  # ZA binds the user id
    assert not sm2_verify(public, MESSAGE + b" ", signature, ex["user_id"], curve)


def test_every_verifier_refuses_changed_messages_ids_keys_and_signatures(capfd):
    public = bytes.fromhex(STANDARD_EXAMPLE["public"])
    signature = bytes.fromhex(STANDARD_EXAMPLE["signature"])
    other = SM2PrivateKey.from_seed(bytes(32)).public_key()
    n = SM2_CURVE.n
    bad_signatures = [signature[:31] + bytes([signature[31] ^ 1]) + signature[32:],
                      signature[:-1] + bytes([signature[-1] ^ 1]), bytes(64), signature[:63],
                      n.to_bytes(32, "big") + signature[32:], signature[:32] + n.to_bytes(32, "big")]
    for check in (sm2_verify, sm2.verify):
        assert not check(public, MESSAGE + b"!", signature)
        assert not check(public, MESSAGE, signature, b"ALICE123@YAHOO.COM")
        assert not check(other, MESSAGE, signature)
        assert not any(check(public, MESSAGE, bad) for bad in bad_signatures)
    off_curve = public[:-1] + bytes([public[-1] ^ 1])
    assert not sm2_verify(off_curve, MESSAGE, signature)
    capfd.readouterr()  # GmSSL writes a trace line to stderr per refusal


def test_gmssl_signatures_and_textbook_signatures_verify_across_implementations():
    rng = random.Random(2026)
    for _ in range(12):
        key = SM2PrivateKey.from_seed(rng.randbytes(32))
        message = rng.randbytes(rng.randrange(0, 300))
        by_gmssl = key.sign(message)
        assert len(by_gmssl) == 64 and sm2_verify(key.public_key(), message, by_gmssl)
        d = 1 + rng.randrange(SM2_CURVE.n - 2)
        by_textbook = textbook_sign(d, message, 1 + rng.randrange(SM2_CURVE.n - 1))
        assert sm2.verify(_public(d, SM2_CURVE), message, by_textbook)


def test_key_derivation_is_stable_in_range_and_never_shown():
    a, b = SM2PrivateKey.from_seed(b"\x01" * 32), SM2PrivateKey.from_seed(b"\x01" * 32)
    assert a.public_key() == b.public_key() != SM2PrivateKey.from_seed(b"\x02" * 32).public_key()
    assert 1 <= a._d <= SM2_CURVE.n - 2 and sm2.public_key_of(a._d) == a.public_key()
    assert a._d.to_bytes(32, "big").hex() not in repr(a) and str(a._d) not in repr(a)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(a)
    with pytest.raises(ValueError):
        SM2PrivateKey.from_seed(bytes(31))
    for d in (0, SM2_CURVE.n - 1):
        with pytest.raises(ValueError):
            sm2.public_key_of(d)


def test_der_conversion_is_strict():
    raw = bytes.fromhex(STANDARD_EXAMPLE["signature"])
    der = sm2.raw_to_der(raw)
    assert sm2.der_to_raw(der) == raw
    for bad in (der[:-1], der + b"\0", b"\x31" + der[1:], der[:2] + b"\x02\x21\x00\x00" + der[6:]):
        with pytest.raises(ValueError):
            sm2.der_to_raw(bad)


# ---- notes, vkeys, checkpoints ------------------------------------------------------------------------------------

def sm2_signer(name: str = ORIGIN, seed: int = 3) -> Signer:
    return Signer(name, SM2PrivateKey.from_seed(bytes([seed]) * 32))


def test_sm2_vkeys_round_trip_and_bad_ones_are_refused():
    signer = sm2_signer()
    key = parse_vkey(signer.vkey())
    assert key.kind == "sm2" and str(key) == signer.vkey() and key.hash_name == "sm3"
    raw = base64.b64decode(signer.vkey().split("+", 2)[2])
    assert raw[:7] == b"\xffhv-sm2" and len(raw) == 72
    assert key.key_id == _sm3(ORIGIN.encode() + b"\n" + raw)[:4]
    assert key.algorithms == {"signature": "sm2-sm3", "tree_hash": "sm3", "file_hash": "sm3"}
    name, key_id, _ = signer.vkey().split("+", 2)

    def vkey(raw_key: bytes) -> str:
        return f"{name}+{key_id}+{base64.b64encode(raw_key).decode()}"

    for bad in (raw[:-1] + bytes([raw[-1] ^ 1]),       # not on the curve
                raw[:7] + b"\x02" + raw[8:],           # compressed marker
                raw[:-1],                              # short
                b"\xffhv-sm3" + raw[7:],               # other type
                b"\x01" + raw[8:40]):                  # an Ed25519-shaped key with the SM2 key id
        with pytest.raises(VerificationError):
            parse_vkey(vkey(bad))
    with pytest.raises(VerificationError):
        parse_vkey(signer.vkey().replace(key_id, f"{int(key_id, 16) ^ 1:08x}"))


def test_sm2_notes_verify_and_refuse_tampering():
    signer = sm2_signer()
    body = make_checkpoint_body(ORIGIN, 7, _sm3(b"root"), ["hv-audit chains 1"])
    note = signer.sign_note(body)
    assert open_note(note, signer.vkey()) == body and verify_note(note, signer.vkey()).size == 7
    assert claims_signer(note, signer.vkey()) and not claims_signer(note, fixed_signer().vkey())
    with pytest.raises(VerificationError, match="invalid signature"):
        open_note(note.replace("\n7\n", "\n8\n"), signer.vkey())
    with pytest.raises(VerificationError, match="no signature"):
        open_note(note, fixed_signer().vkey())      # an Ed25519 key of the same name does not count
    with pytest.raises(VerificationError, match="no signature"):
        open_note(note, sm2_signer(seed=4).vkey())
    sig = note.rsplit(" ", 1)[1].strip()
    raw = base64.b64decode(sig)
    forged = note.replace(sig, base64.b64encode(raw[:4] + raw[4:36] + bytes(32)).decode())
    with pytest.raises(VerificationError, match="invalid signature"):
        open_note(forged, signer.vkey())


def test_the_openssl_command_line_verifies_sm2_checkpoints(tmp_path):
    example = STANDARD_EXAMPLE  # first the recipe on the standard's own example
    assert openssl_verify(tmp_path, bytes.fromhex(example["public"]), MESSAGE, bytes.fromhex(example["signature"]))
    assert not openssl_verify(tmp_path, bytes.fromhex(example["public"]), MESSAGE + b".",
                              bytes.fromhex(example["signature"]))
    signer = sm2_signer()
    note = signer.sign_note(make_checkpoint_body(ORIGIN, 42, _sm3(b"some root")))
    assert openssl_verifies_note(tmp_path, signer.vkey(), note)
    assert not openssl_verifies_note(tmp_path, signer.vkey(), note.replace("\n42\n", "\n43\n"))


# ---- SM3 trees ----------------------------------------------------------------------------------------------------

def test_sm3_merkle_log_is_rfc9162_with_sm3():
    datas = [i.to_bytes(4, "big") for i in range(70)]
    log = MerkleLog.from_leaf_data(datas, "sm3")
    one_by_one = MerkleLog("sm3")
    for d in datas:
        one_by_one.append_leaf_data(d)
    hashes_ = [verify.leaf_hash(d, "sm3") for d in datas]
    assert hashes_[0] == _sm3(b"\x00" + datas[0])
    assert verify.node_hash(hashes_[0], hashes_[1], "sm3") == _sm3(b"\x01" + hashes_[0] + hashes_[1])
    assert log.root(0) == one_by_one.root(0) == _sm3(b"")
    for size in range(1, 71):
        root = verify.root_from_leaf_hashes(hashes_[:size], "sm3")
        assert log.root(size) == one_by_one.root(size) == root
        assert root != verify.root_from_leaf_hashes([verify.leaf_hash(d) for d in datas[:size]])
        for index in (0, size // 2, size - 1):
            proof = log.inclusion_proof(index, size)
            assert proof == verify.inclusion_proof(hashes_, index, size, "sm3")
            assert verify.verify_inclusion(hashes_[index], index, size, proof, root, "sm3")
            if size > 1:  # (a one-leaf tree has an empty proof under any hash)
                assert not verify.verify_inclusion(hashes_[index], index, size, proof, root)  # not SHA-256
        for size1 in (1, size // 3, size - 1):
            if 0 < size1 < size:
                proof = log.consistency_proof(size1, size)
                assert verify.verify_consistency(size1, size, proof, log.root(size1), root, "sm3")
    with pytest.raises(VerificationError):
        MerkleLog("md5")


# ---- export bundles -----------------------------------------------------------------------------------------------

def mixed_log(n_old: int, n_new: int, seed: int = 11) -> tuple[list[dict], list[bytes]]:
    """n_old format-1 events on chains 0-1, then n_new format-2 events on chains 32768-32769 (a suite switch)."""
    rng = random.Random(seed)
    heads: dict[int, tuple[int, str]] = {}
    events, leaves = [], []
    for i in range(n_old + n_new):
        v = 1 if i < n_old else 2
        chain = rng.randrange(2) + (verify.SM_CHAIN_BASE if v == 2 else 0)
        seq, prev = heads.get(chain, (-1, verify.ZERO_HASH_HEX))
        event = {**make_event(rng, i, chain, seq + 1, prev), "v": v}
        digest = event_hash(canonical_bytes(event))
        assert digest == (_sm3(b"hv-audit-event/v2\x00" + canonical_bytes(event)) if v == 2 else digest)
        events.append({**event, "hash": digest.hex()})
        leaves.append(leaf_data(chain, seq + 1, digest))
        heads[chain] = (seq + 1, digest.hex())
    return events, leaves


def sm2_bundle(out: Path, events, leaves, sizes, signer=None, first: int = 0) -> Path:
    signer = signer or sm2_signer()
    log = MerkleLog.from_leaf_data(leaves, "sm3")
    notes = [signer.sign_note(make_checkpoint_body(ORIGIN, s, log.root(s))) for s in sizes]
    return write_bundle(out, origin=ORIGIN, events=events[first:], first_leaf=first, all_leaf_data=leaves,
                        checkpoints=notes, signer=signer, since=None, until=None,
                        created_at=dt.datetime(2026, 11, 26, tzinfo=dt.UTC).isoformat())


def test_an_sm2_export_of_both_event_formats_verifies_and_says_its_algorithms(tmp_path):
    events, leaves = mixed_log(40, 60)
    path = sm2_bundle(tmp_path / "x", events, leaves, (40, 70, 100))
    report = verify_bundle(path, sm2_signer().vkey(), strict=True)
    assert report.ok, report.problems
    assert report.algorithms == {"signature": "sm2-sm3", "tree_hash": "sm3", "file_hash": "sm3",
                                 "event_hash": ["sha256", "sm3"]}
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["algorithms"] == report.algorithms
    assert manifest["files"]["leaves.bin"] == _sm3((path / "leaves.bin").read_bytes()).hex()
    # Only SM events in the range: the manifest says so too.
    only_new = sm2_bundle(tmp_path / "y", events, leaves, (100,), first=40)
    assert verify_bundle(only_new, sm2_signer().vkey()).algorithms["event_hash"] == ["sm3"]
    # The CLI names the algorithms.
    done = subprocess.run([sys.executable, "-m", "audit.verify", str(path), "--key", sm2_signer().vkey()],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "VERIFIED" in done.stdout and "sm2-sm3" in done.stdout, done.stdout


def test_tampering_in_an_sm2_export_is_named(tmp_path):
    events, leaves = mixed_log(30, 30)
    pristine = sm2_bundle(tmp_path / "p", events, leaves, (30, 60))
    vkey = sm2_signer().vkey()

    def copy(name: str) -> Path:
        return Path(shutil.copytree(pristine, tmp_path / name))

    edited = copy("event")
    lines = (edited / "events.jsonl").read_bytes().splitlines(keepends=True)
    lines[45] = lines[45].replace(b'"outcome":"allow"', b'"outcome":"deny"').replace(
        b'"outcome":"error"', b'"outcome":"deny"')
    (edited / "events.jsonl").write_bytes(b"".join(lines))
    assert verify_bundle(edited, vkey).problems[0].startswith("event at leaf 45")
    downgraded = copy("downgrade")  # an SM3 event relabelled v 1 does not hash to its leaf
    lines = (downgraded / "events.jsonl").read_bytes().splitlines(keepends=True)
    lines[50] = lines[50].replace(b',"v":2}', b',"v":1}')
    (downgraded / "events.jsonl").write_bytes(b"".join(lines))
    assert "event at leaf 50" in verify_bundle(downgraded, vkey).problems[0]
    relabelled = copy("algorithms")
    manifest = json.loads((relabelled / "manifest.json").read_text())
    manifest["algorithms"]["tree_hash"] = "sha256"
    (relabelled / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_bundle(relabelled, vkey).problems
    assert any("algorithms" in p for p in problems) and any("manifest.sig" in p for p in problems)
    # An SM2 export does not verify under an Ed25519 key, nor under another SM2 key.
    assert not verify_bundle(pristine, fixed_signer().vkey()).ok
    assert not verify_bundle(pristine, sm2_signer(seed=9).vkey()).ok


def test_an_ed25519_export_without_algorithms_still_verifies_but_an_sm2_one_must_say(tmp_path):
    events, leaves = mixed_log(20, 0)
    signer = fixed_signer()
    log = MerkleLog.from_leaf_data(leaves)
    notes = [signer.sign_note(make_checkpoint_body(ORIGIN, 20, log.root(20)))]
    path = write_bundle(tmp_path / "old", origin=ORIGIN, events=events, first_leaf=0, all_leaf_data=leaves,
                        checkpoints=notes, signer=signer, since=None, until=None, created_at=None)
    report = verify_bundle(path, signer.vkey())
    assert report.ok and report.algorithms["signature"] == "ed25519" and report.algorithms["event_hash"] == ["sha256"]
    with pytest.raises(VerificationError):  # the writer refuses checkpoints over an SM3 tree signed by Ed25519
        write_bundle(tmp_path / "wrong", origin=ORIGIN, events=events, first_leaf=0, all_leaf_data=leaves,
                     checkpoints=[signer.sign_note(make_checkpoint_body(ORIGIN, 20, MerkleLog.from_leaf_data(
                         leaves, "sm3").root(20)))], signer=signer, since=None, until=None, created_at=None)


def test_the_verifier_stays_self_contained():
    source = (ROOT / "audit" / "verify.py").read_text("utf-8")
    assert "gmssl" not in source and "import kms" not in source and "from kms" not in source
    assert os.path.getsize(ROOT / "audit" / "verify.py") < 64 * 1024
