"""An append-only in-memory Merkle tree that answers roots and proofs for any earlier size in O(log² n) hashes.

Owns: the cached tree levels of the server's log (level h holds the hash of every complete, aligned subtree of 2^h
leaves: 32 bytes each, about 64 MB for 1,000,000 leaves in all levels together).
Never: defines a hashing rule of its own: leaf, node and empty-tree hashes come from `audit.verify` (SHA-256 by
default, SM3 for a log signed in the SM suite: `MerkleLog(alg="sm3")`), and every proof it produces is the one
`verify.inclusion_proof` / `verify.consistency_proof` define (tests compare them). Not thread-safe: one writer, or a
lock around it.
"""

from __future__ import annotations

from audit.verify import HASHES, VerificationError, empty_root, leaf_hash, node_hash, parent_level


class MerkleLog:
    """Append leaf hashes, then ask for root(size), inclusion_proof(index, size), consistency_proof(size1, size2)."""

    def __init__(self, alg: str = "sha256") -> None:
        if alg not in HASHES:
            raise VerificationError(f"tree: unknown hash {alg!r}")
        self.alg = alg
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0

    @classmethod
    def from_leaf_hashes(cls, hashes: list[bytes], alg: str = "sha256") -> MerkleLog:
        """Bulk build, level by level (several times faster than appending one by one)."""
        level = b"".join(hashes)
        if len(level) != 32 * len(hashes):
            raise VerificationError("tree: every leaf hash is 32 bytes")
        return cls.from_joined_leaf_hashes(level, alg)

    @classmethod
    def from_joined_leaf_hashes(cls, level: bytes | bytearray, alg: str = "sha256") -> MerkleLog:
        """Bulk build from the leaf hashes already concatenated (32 bytes each, in leaf order)."""
        if len(level) % 32:
            raise VerificationError("tree: every leaf hash is 32 bytes")
        log = cls(alg)
        log._size = len(level) // 32
        log._levels = [bytearray(level)]
        while len(level) >= 64:  # reads the caller's buffer: the levels hold copies
            level = b"".join(parent_level(level, alg))
            log._levels.append(bytearray(level))
        return log

    @classmethod
    def from_leaf_data(cls, datas: list[bytes], alg: str = "sha256") -> MerkleLog:
        return cls.from_leaf_hashes([leaf_hash(d, alg) for d in datas], alg)

    def __len__(self) -> int:
        return self._size

    @property
    def size(self) -> int:
        return self._size

    def append(self, digest: bytes) -> int:
        """Append one leaf hash; returns its index. Completes every subtree that this leaf closes."""
        if len(digest) != 32:
            raise VerificationError("tree: a leaf hash is 32 bytes")
        index = self._size
        self._levels[0] += digest
        self._size += 1
        height, n = 0, index
        while n & 1:
            level = self._levels[height]
            parent = node_hash(bytes(level[-64:-32]), bytes(level[-32:]), self.alg)
            height, n = height + 1, n >> 1
            if height == len(self._levels):
                self._levels.append(bytearray())
            self._levels[height] += parent
        return index

    def append_leaf_data(self, data: bytes) -> int:
        return self.append(leaf_hash(data, self.alg))

    def leaf_hash(self, index: int) -> bytes:
        self._check(0 <= index < self._size, "leaf index out of range")
        return bytes(self._levels[0][index * 32:index * 32 + 32])

    def root(self, size: int | None = None) -> bytes:
        size = self._size if size is None else size
        self._check(0 <= size <= self._size, "tree size beyond the log")
        return self._mth(0, size) if size else empty_root(self.alg)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 PATH(index, D[size]), siblings from the leaf up."""
        size = self._size if size is None else size
        self._check(0 <= index < size <= self._size, "need 0 <= index < size <= log size")
        path, start, end = [], 0, size
        while end - start > 1:
            k = 1 << ((end - start - 1).bit_length() - 1)
            if index < start + k:
                path.append(self._mth(start + k, end))
                end = start + k
            else:
                path.append(self._mth(start, start + k))
                start += k
        return path[::-1]

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 PROOF(size1, D[size2]); empty when size1 is 0 or equals size2."""
        size2 = self._size if size2 is None else size2
        self._check(0 <= size1 <= size2 <= self._size, "need 0 <= size1 <= size2 <= log size")
        if size1 in (0, size2):
            return []
        proof, start, end, m, whole = [], 0, size2, size1, True
        while m != end - start:
            k = 1 << ((end - start - 1).bit_length() - 1)
            if m <= k:
                proof.append(self._mth(start + k, end))
                end = start + k
            else:
                proof.append(self._mth(start, start + k))
                start, m, whole = start + k, m - k, False
        if not whole:
            proof.append(self._mth(start, end))
        return proof[::-1]

    def _mth(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for the ranges RFC 9162's recursion visits (start is a multiple of the largest power of
        two below end - start): a cached perfect subtree, or a right fold of them."""
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            height = n.bit_length() - 1
            offset = (start >> height) * 32
            return bytes(self._levels[height][offset:offset + 32])
        k = 1 << ((n - 1).bit_length() - 1)
        return node_hash(self._mth(start, start + k), self._mth(start + k, end), self.alg)

    @staticmethod
    def _check(condition: bool, message: str) -> None:
        if not condition:
            raise VerificationError(f"tree: {message}")
