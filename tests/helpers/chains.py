"""Recompute the audit chains from the rows, as a verifier would (shared by the trail, concurrency and lane tests)."""

from __future__ import annotations

from sqlalchemy import select

from audit import trail, verify
from audit.models import AuditEvent, ChainHead


def check_chains(session) -> int:
    """Recompute every chain from the rows: gapless seq, linked prev_hash, hash over the canonical encoding."""
    count = 0
    for head in session.scalars(select(ChainHead)):
        prev, expected_seq = trail.GENESIS, 0
        for row in session.scalars(select(AuditEvent).where(AuditEvent.chain_id == head.chain_id)
                                   .order_by(AuditEvent.seq)):
            assert row.seq == expected_seq
            assert row.prev_hash == prev
            assert verify.event_hash(verify.canonical_bytes(trail.canonical_event(row))).hex() == row.hash
            prev, expected_seq = row.hash, expected_seq + 1
            count += 1
        assert (head.seq, head.hash) == (expected_seq - 1, prev)
    return count
