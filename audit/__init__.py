"""Audit trail: events chained per chain, a Merkle log over them, signed checkpoints, and offline-verifiable exports.

Owns: `verify` (the self-contained verifier and the single source of the hashing rules), `merkle` (a fast in-memory
tree for proofs), `checkpoint` (signing notes and checkpoints), `bundle` (writing an export directory).
Never: imports anything here, so that `python -m audit.verify` loads no project code besides the verifier itself.
"""
