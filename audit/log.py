"""The Merkle log over all chains, and its signed checkpoints.

Owns integrating newly committed events of every chain into one append-only Merkle tree (RFC 9162 hashing, rules in
`audit.verify`) and signing C2SP tlog-checkpoints over it. Integration takes a log-wide lock (a PostgreSQL advisory
lock; SQLite's write lock), reads each chain past its integrated watermark — a committed prefix, because a chain's
appends commit in seq order under its head lock — orders the batch by insertion id, appends the leaves, moves the
watermarks and signs, all in one transaction. The signing key is kms's `audit-signing` service key (Ed25519 seed) in
the "aes" suite, `sm:audit-signing` (SM2 key derived by kms.sm2) in the "sm" suite; the signer's key type decides the
tree's hash (SHA-256 or SM3) over the same leaves, so checkpoints signed after a suite switch cover the whole log,
old leaves included. This module never sees any other key and never reads event bodies beyond their hashes.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session

from audit import verify
from audit.checkpoint import Signer, make_checkpoint_body
from audit.merkle import MerkleLog
from audit.models import AuditEvent, ChainHead, Checkpoint, Leaf

SIGNING_PURPOSE = "audit-signing"
SM_SIGNING_PURPOSE = "sm:audit-signing"
_PG_LOCK_KEY = 0x68764C4F47  # "hvLOG"
_PAGE = 20_000  # leaves read per round trip when the copy is built or extended


def signer_from_key(origin: str, seed: bytes, *, sm2: bool = False) -> Signer:
    """The checkpoint signer: an Ed25519 key whose 32-byte seed is kms's single-purpose audit-signing key, or (the SM
    suite) an SM2 key derived from kms's `sm:audit-signing` key."""
    if sm2:
        from kms.sm2 import SM2PrivateKey

        return Signer(origin, SM2PrivateKey.from_seed(seed))
    return Signer(origin, Ed25519PrivateKey.from_private_bytes(seed[:32]))


def lock_log(session: Session) -> None:
    """Serialise integrators (and the archiver) across processes for the rest of the transaction."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    else:
        # A write statement takes SQLite's database write lock at once, even when it changes no row.
        session.execute(update(ChainHead).where(ChainHead.chain_id == -1).values(seq=ChainHead.seq))


class LogCache:
    """This process's copy of the leaf hashes, extended from the database as the log grows. `alg` is the tree hash
    of the signer ("sha256" or "sm3"); asking for another one rebuilds the copy from the database."""

    def __init__(self, alg: str = "sha256") -> None:
        self.tree = MerkleLog(alg)
        self.lock = threading.Lock()

    @property
    def alg(self) -> str:
        return self.tree.alg

    def reset(self, alg: str | None = None) -> None:
        """Forget everything (after a rolled-back integration); the next sync reloads from the database."""
        with self.lock:
            self.tree = MerkleLog(alg or self.tree.alg)

    def sync(self, session: Session, size: int | None = None, alg: str | None = None) -> MerkleLog:
        """Extend the copy with the leaves it lacks (up to `size`). A cold copy (a new process, or the first
        checkpoint after a restart: millions of leaves) is read in pages and built level by level."""
        if alg is not None and alg != self.tree.alg:
            self.reset(alg)
        with self.lock:
            have = self.tree.size
            query = select(Leaf.chain_id, Leaf.seq, Leaf.event_hash).where(Leaf.leaf_index >= have)
            if size is not None:
                query = query.where(Leaf.leaf_index < size)
            alg = self.tree.alg
            rows = session.execute(query.order_by(Leaf.leaf_index).execution_options(yield_per=_PAGE))
            if have == 0:
                level = bytearray()
                for chain_id, seq, event_hash in rows:
                    level += verify.leaf_hash(verify.leaf_data(chain_id, seq, bytes(event_hash)), alg)
                self.tree = MerkleLog.from_joined_leaf_hashes(level, alg)
                return self.tree
            for chain_id, seq, event_hash in rows:
                self.tree.append(verify.leaf_hash(verify.leaf_data(chain_id, seq, bytes(event_hash)), alg))
            return self.tree


def tree_size(session: Session) -> int:
    return int(session.execute(select(func.coalesce(func.max(Leaf.leaf_index), -1))).scalar_one()) + 1


def pending_events(session: Session) -> int:
    """Events committed but not yet in the Merkle log."""
    return int(session.scalar(select(func.coalesce(func.sum(ChainHead.seq - ChainHead.integrated_seq), 0))) or 0)


def latest_checkpoint(session: Session) -> Checkpoint | None:
    return session.scalars(select(Checkpoint).order_by(Checkpoint.tree_size.desc(), Checkpoint.id.desc())
                           .limit(1)).first()


def integrate(session: Session, *, cache: LogCache, signer: Signer, origin: str, now: dt.datetime,
              force: bool = False, kind: str = "checkpoint", extensions: tuple[str, ...] = (),
              progress: Callable[[int], None] | None = None) -> Checkpoint | None:
    """Append pending events as leaves and sign a checkpoint; None when there was nothing new (and not forced).

    The caller commits."""
    lock_log(session)
    size = tree_size(session)
    try:  # a cold copy is built here, BEFORE any chain head is locked below: appends go on meanwhile
        cache.sync(session, size, signer.hash_name)
    except BaseException:
        cache.reset()
        raise
    batch: list[tuple[int, int, int, str]] = []
    heads = session.execute(select(ChainHead.chain_id, ChainHead.integrated_seq)).all()
    for chain_id, integrated in heads:
        rows = session.execute(
            select(AuditEvent.id, AuditEvent.chain_id, AuditEvent.seq, AuditEvent.hash)
            .where(AuditEvent.chain_id == chain_id, AuditEvent.seq > integrated).order_by(AuditEvent.seq)
        ).all()
        expected = integrated + 1
        for row in rows:
            if row.seq != expected:  # a gap would mean a lost or uncommitted predecessor: stop at the prefix
                break
            batch.append((row.id, row.chain_id, row.seq, row.hash))
            expected += 1
    latest = latest_checkpoint(session)
    if not batch and not force and latest is not None and latest.tree_size == size:
        return None
    batch.sort()
    if batch:
        session.execute(insert(Leaf), [
            {"leaf_index": size + i, "chain_id": chain_id, "seq": seq, "event_hash": bytes.fromhex(event_hash)}
            for i, (_id, chain_id, seq, event_hash) in enumerate(batch)])
        newest: dict[int, int] = {}
        for _id, chain_id, seq, _hash in batch:
            newest[chain_id] = max(seq, newest.get(chain_id, -1))
        for chain_id, seq in newest.items():
            session.execute(update(ChainHead).where(ChainHead.chain_id == chain_id).values(integrated_seq=seq))
        session.flush()
    new_size = size + len(batch)
    try:
        root = cache.sync(session, new_size, signer.hash_name).root(new_size)
        note = signer.sign_note(make_checkpoint_body(origin, new_size, root, extensions))
        checkpoint = Checkpoint(tree_size=new_size, root_hash=root, kind=kind, note=note, created_at=now)
        session.add(checkpoint)
        session.flush()
    except BaseException:
        cache.reset()  # the leaves it just read may never commit
        raise
    if progress:
        progress(len(batch))
    return checkpoint


def inclusion_proof(session: Session, *, cache: LogCache, leaf_index: int, size: int) -> list[bytes]:
    tree = cache.sync(session, size)
    return tree.inclusion_proof(leaf_index, size)


def consistency_proof(session: Session, *, cache: LogCache, size1: int, size2: int) -> list[bytes]:
    tree = cache.sync(session, size2)
    return tree.consistency_proof(size1, size2)
