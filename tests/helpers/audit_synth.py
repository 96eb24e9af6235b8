"""A tiny generator of synthetic audit logs and exports for the audit tests and the bench (no vault, no database).

Events are spread pseudo-randomly over a few chains, each correctly chained; checkpoints are signed with a fixed test
key so failures are reproducible.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.bundle import write_bundle
from audit.checkpoint import MerkleLog, Signer, make_checkpoint_body
from audit.verify import ZERO_HASH_HEX, canonical_bytes, event_hash, leaf_data

ORIGIN = "vault.example/audit"
T0 = dt.datetime(2026, 11, 25, 9, 31, tzinfo=dt.UTC)


def fixed_signer(name: str = ORIGIN, seed: int = 1) -> Signer:
    return Signer(name, Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


def make_event(rng: random.Random, i: int, chain: int, seq: int, prev: str) -> dict:
    odd = rng.random() < 0.05
    return {
        "v": 1, "chain": chain, "seq": seq,
        "time": (T0 + dt.timedelta(milliseconds=37 * i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": f"ps_{rng.getrandbits(64):016x}", "actor_role": rng.choice(["doctor", "patient", "escort"]),
        "action": rng.choice(["record.read", "record.create", "patient.read"]), "resource_type": "record",
        "resource_id": f"{rng.getrandbits(128):032x}", "patient": f"pp_{rng.getrandbits(64):016x}",
        "outcome": rng.choice(["allow", "allow", "deny", "error"]),
        "reason": "急诊抢救 \"break-glass\" \\ ☎" if odd else None,
        "grant_id": f"g-{rng.randrange(10**6)}" if rng.random() < 0.5 else None,
        "request_id": f"req-{rng.getrandbits(64):016x}", "client_addr": f"10.0.{rng.randrange(256)}.{i % 256}",
        "user_agent": "=HYPERLINK(\"x\")\t\x01\",\"chain\":9,\"seq\":9,\"prev_hash\":\"" if odd else
                      "Mozilla/5.0 (X11; Linux x86_64)",
        "prev_hash": prev,
    }


def make_log(n: int, chains: int = 3, seed: int = 7) -> tuple[list[dict], list[bytes]]:
    """n events (each with its "hash") and their leaf data, leaf i = event i."""
    rng = random.Random(seed)
    heads: dict[int, tuple[int, str]] = {}
    events, leaves = [], []
    for i in range(n):
        chain = rng.randrange(chains)
        seq, prev = heads.get(chain, (-1, ZERO_HASH_HEX))
        event = make_event(rng, i, chain, seq + 1, prev)
        digest = event_hash(canonical_bytes(event))
        events.append({**event, "hash": digest.hex()})
        leaves.append(leaf_data(chain, seq + 1, digest))
        heads[chain] = (seq + 1, digest.hex())
    return events, leaves


def rechain(events: list[dict]) -> tuple[list[dict], list[bytes]]:
    """Recompute seq, prev_hash and hash of every event in list order (what a forger would do after editing)."""
    heads: dict[int, tuple[int, str]] = {}
    out, leaves = [], []
    for event in events:
        event = {k: v for k, v in event.items() if k != "hash"}
        seq, prev = heads.get(event["chain"], (-1, ZERO_HASH_HEX))
        event.update(seq=seq + 1, prev_hash=prev)
        digest = event_hash(canonical_bytes(event))
        out.append({**event, "hash": digest.hex()})
        leaves.append(leaf_data(event["chain"], seq + 1, digest))
        heads[event["chain"]] = (seq + 1, digest.hex())
    return out, leaves


def sign_checkpoints(leaves: list[bytes], sizes, signer: Signer, origin: str = ORIGIN) -> list[str]:
    log = MerkleLog.from_leaf_data(leaves)
    return [signer.sign_note(make_checkpoint_body(origin, s, log.root(s), ["hv-audit chains 3"])) for s in sizes]


def build_bundle(out: Path, n: int = 300, sizes=(60, 150, 240, 300), first: int = 0, count: int | None = None,
                 signer: Signer | None = None, seed: int = 7, verify: bool = True) -> tuple[Path, list[dict]]:
    """An export of events [first, first + count) of a synthetic log of n events, checkpoints at `sizes`."""
    signer = signer or fixed_signer()
    events, leaves = make_log(n, seed=seed)
    count = n - first if count is None else count
    notes = sign_checkpoints(leaves, sizes, signer)
    path = write_bundle(out, origin=ORIGIN, events=events[first:first + count], first_leaf=first, all_leaf_data=leaves,
                        checkpoints=notes, signer=signer, since=events[first]["time"] if count else None,
                        until=None, created_at="2026-11-26T00:00:00.000000Z", verify=verify)
    return path, events
