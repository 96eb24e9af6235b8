"""RFC 6962 / RFC 9162 Merkle tree: known answers from transparency-dev/merkle, and proof round trips.

Known answers: testonly/constants.go (leaf inputs, node and root hashes of the 8-leaf tree) and proof/verify_test.go
(inclusion and consistency proof vectors) of github.com/transparency-dev/merkle, the vectors Certificate
Transparency implementations share. Round trips: every (index, size) and every (size1, size2) up to 70 leaves, the
reference generators of audit.verify against the cached audit.merkle.MerkleLog, with corrupted proofs refused.
"""

from __future__ import annotations

import hashlib

import pytest

from audit.merkle import MerkleLog
from audit.verify import (
    VerificationError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

LEAF_INPUTS = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                          "606162636465666768696a6b6c6d6e6f")]
EMPTY_ROOT = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
ROOTS = [EMPTY_ROOT,
         "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
         "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
         "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
         "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
         "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
         "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
         "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
         "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]
LEAF_HASHES_HEX = ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                   "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                   "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
                   "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
                   "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                   "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
                   "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                   "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"]
# (leaf index 0-based, tree size, proof); the Go file numbers leaves from 1.
INCLUSION = [(0, 1, []),
             (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                     "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                     "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
             (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                     "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                     "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
             (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
             (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                     "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                     "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"])]
CONSISTENCY = [(1, 1, []),
               (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                       "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                       "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
               (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                       "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                       "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
               (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                       "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
               (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                       "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                       "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"])]
H = [leaf_hash(d) for d in LEAF_INPUTS]
SOME = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def hexes(proof):
    return [p.hex() for p in proof]


def test_empty_tree_is_sha256_of_nothing():
    assert root_from_leaf_hashes([]).hex() == EMPTY_ROOT == hashlib.sha256(b"").hexdigest()
    assert MerkleLog().root().hex() == EMPTY_ROOT


def test_leaf_and_node_hashes_and_roots_match_the_vectors():
    assert hexes(H) == LEAF_HASHES_HEX
    assert node_hash(H[0], H[1]).hex() == ROOTS[2]
    log = MerkleLog()
    for i in range(9):
        assert root_from_leaf_hashes(H[:i]).hex() == ROOTS[i]
        assert MerkleLog.from_leaf_hashes(H[:i]).root().hex() == ROOTS[i]
        assert log.root().hex() == ROOTS[i]
        if i < 8:
            log.append(H[i])
    assert [log.root(i).hex() for i in range(9)] == ROOTS


@pytest.mark.parametrize("index,size,proof", INCLUSION)
def test_inclusion_vectors(index, size, proof):
    assert hexes(inclusion_proof(H, index, size)) == proof
    assert hexes(MerkleLog.from_leaf_hashes(H).inclusion_proof(index, size)) == proof
    p, root = [bytes.fromhex(x) for x in proof], bytes.fromhex(ROOTS[size])
    assert verify_inclusion(H[index], index, size, p, root)
    # the corruptions of transparency-dev's verifierCheck
    bad = [(index - 1, size, H[index], p, root), (index + 1, size, H[index], p, root),
           (index ^ 2, size, H[index], p, root), (index, size * 2, H[index], p, root),
           (index, size // 2, H[index], p, root), (index, size, b"WrongLeaf", p, root),
           (index, size, H[index], p, bytes.fromhex(EMPTY_ROOT)), (index, size, H[index], p, SOME),
           (index, size, H[index], p + [b""], root), (index, size, H[index], p + [root], root),
           (index, size, H[index], [b""] + p, root), (index, size, H[index], [root] + p, root)]
    for i in range(len(p)):
        flipped = list(p)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        bad.append((index, size, H[index], flipped, root))
    if p:
        bad.append((index, size, H[index], p[:-1], root))
    for args in bad:
        if args[1] == size and args[0] == index and args[2:] == (H[index], p, root):
            continue
        assert not verify_inclusion(args[2], args[0], args[1], args[3], args[4]), args


@pytest.mark.parametrize("size1,size2,proof", CONSISTENCY)
def test_consistency_vectors(size1, size2, proof):
    assert hexes(consistency_proof(H, size1, size2)) == proof
    assert hexes(MerkleLog.from_leaf_hashes(H).consistency_proof(size1, size2)) == proof
    p = [bytes.fromhex(x) for x in proof]
    r1, r2 = bytes.fromhex(ROOTS[size1]), bytes.fromhex(ROOTS[size2])
    assert verify_consistency(size1, size2, p, r1, r2)
    if not p:
        return
    bad = [(size1 - 1, size2, p, r1, r2), (size1 + 1, size2, p, r1, r2), (size1 ^ 2, size2, p, r1, r2),
           (size1, size2 * 2, p, r1, r2), (size1, size2 // 2, p, r1, r2), (size1, size2, p, b"WrongRoot", r2),
           (size1, size2, p, r1, b"WrongRoot"), (size1, size2, p, r2, r1), (size1, size2, [], r1, r2),
           (size1, size2, p + [b""], r1, r2), (size1, size2, p + [r1], r1, r2), (size1, size2, p + [r2], r1, r2),
           (size1, size2, [b""] + p, r1, r2), (size1, size2, [r1] + p, r1, r2), (size1, size2, [r2] + p, r1, r2),
           (size1, size2, [p[0]] + p, r1, r2), (size1, size2, p[:-1], r1, r2)]
    for i in range(len(p)):
        flipped = list(p)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        bad.append((size1, size2, flipped, r1, r2))
    for args in bad:
        assert not verify_consistency(*args), args


def test_consistency_edge_cases_follow_transparency_dev():
    e = bytes.fromhex(EMPTY_ROOT)
    r1, r2 = b"don't care 1", b"don't care 2"
    assert not verify_consistency(0, 0, [], r1, r2)
    assert not verify_consistency(1, 1, [], r1, r2)
    assert verify_consistency(0, 0, [], r1, r1)
    assert verify_consistency(0, 1, [], r1, r2)
    assert verify_consistency(1, 1, [], r2, r2)
    assert not verify_consistency(1, 0, [], r1, r2)
    assert not verify_consistency(2, 1, [], r1, r2)
    assert not verify_consistency(1, 2, [], r1, r2)
    assert not verify_consistency(0, 0, [e], e, e)
    assert not verify_consistency(0, 1, [e], e, e)
    assert not verify_consistency(1, 1, [e], e, e)


def test_inclusion_edge_cases():
    for index, size in ((0, 0), (1, 0), (2, 1)):
        assert not verify_inclusion(SOME, index, size, [], SOME)
    assert verify_inclusion(H[0], 0, 1, [], H[0])
    assert not verify_inclusion(H[0], 0, 1, [], b"")
    with pytest.raises(VerificationError):
        inclusion_proof(H, 8, 8)
    with pytest.raises(VerificationError):
        consistency_proof(H, 5, 9)


def test_all_proofs_up_to_70_leaves_round_trip():
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(70)]
    log, appended = MerkleLog.from_leaf_hashes(hashes), MerkleLog()
    for h in hashes:
        appended.append(h)
    roots = [root_from_leaf_hashes(hashes[:n]) for n in range(71)]
    for size in range(1, 71):
        assert log.root(size) == appended.root(size) == roots[size]
        for index in range(size):
            proof = inclusion_proof(hashes, index, size)
            assert log.inclusion_proof(index, size) == appended.inclusion_proof(index, size) == proof
            assert verify_inclusion(hashes[index], index, size, proof, roots[size])
            assert not verify_inclusion(hashes[index], (index + 1) % size, size, proof, roots[size]) or size == 1
            assert not verify_inclusion(hashes[(index + 1) % size], index, size, proof, roots[size]) or size == 1
        for size1 in range(size + 1):
            proof = consistency_proof(hashes, size1, size)
            assert log.consistency_proof(size1, size) == proof
            assert verify_consistency(size1, size, proof, roots[size1], roots[size])
            if 0 < size1 < size:
                assert not verify_consistency(size1, size, proof, roots[size1 - 1], roots[size])
                assert not verify_consistency(size1, size, proof, roots[size1], roots[size - 1])
                broken = [proof[0][:-1] + bytes([proof[0][-1] ^ 1])] + proof[1:]
                assert not verify_consistency(size1, size, broken, roots[size1], roots[size])


def test_merkle_log_rejects_bad_arguments():
    log = MerkleLog.from_leaf_hashes(H)
    for call in (lambda: log.root(9), lambda: log.inclusion_proof(8), lambda: log.inclusion_proof(3, 3),
                 lambda: log.consistency_proof(5, 9), lambda: log.append(b"short"), lambda: log.leaf_hash(8),
                 lambda: MerkleLog.from_leaf_hashes([b"x" * 31])):
        with pytest.raises(VerificationError):
            call()
    assert log.leaf_hash(3) == H[3] and len(log) == log.size == 8
