"""Cost of checking an audit export offline, and of serving one inclusion proof from a large log.

(a) verify: an export of N events (default 200,000) on 3 chains, with all N leaves and 4 checkpoints, written by
    audit.bundle and checked by audit.verify.verify_bundle, as an assessor would (key pinned; manifest, file hashes,
    events, leaves, roots and consistency proofs: the whole check). Target: >= 100,000 events/s on one core. The
    figure is events / CPU second of this process, median of 3 (the verifier is single-threaded, and CPU time leaves
    out the time other processes on a shared machine take); wall-clock figures are shown too, and one --strict run.
(b) inclusion proof: audit.merkle.MerkleLog over 1,000,000 leaves (not a power of two, so proofs cross the ragged
    right edge); the one-off cache build is timed separately, then ~100 random indices. Target: < 50 ms per proof.
    Every proof is checked with audit.verify.verify_inclusion (not timed).

Usage: python bench/bench_audit_verify.py [--events N] [--proof-leaves M] [--quick]
Prints a RESULT_JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.bundle import write_bundle
from audit.checkpoint import MerkleLog, Signer, make_checkpoint_body
from audit.verify import (
    ZERO_HASH_HEX,
    canonical_bytes,
    event_hash,
    leaf_data,
    leaf_hash,
    verify_bundle,
    verify_inclusion,
)

ORIGIN = "bench.healthvault.local/audit"
VERIFY_TARGET = 100_000  # events per CPU second
PROOF_TARGET_MS = 50.0


def synthetic_log(n: int, chains: int = 3) -> tuple[list[dict], list[bytes]]:
    """n realistic-looking events (~490 bytes canonical), chained per chain, and their leaf data."""
    rng = random.Random(1)
    heads: dict[int, tuple[int, str]] = {}
    events, leaves = [], []
    t0 = 1_795_000_000  # 2026-11-18, whole seconds
    for i in range(n):
        chain = rng.randrange(chains)
        seq, prev = heads.get(chain, (-1, ZERO_HASH_HEX))
        s = t0 + i // 50
        event = {
            "v": 1, "chain": chain, "seq": seq + 1,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{(i % 50) * 20000:06d}Z",
            "actor": f"ps_{rng.getrandbits(64):016x}", "actor_role": "doctor", "action": "record.read",
            "resource_type": "record", "resource_id": f"{rng.getrandbits(128):032x}",
            "patient": f"pp_{rng.getrandbits(64):016x}", "outcome": "allow" if i % 7 else "deny",
            "reason": None, "grant_id": f"g-{i % 9973}", "request_id": f"req-{rng.getrandbits(64):016x}",
            "client_addr": f"10.{i % 7}.{i % 251}.{i % 241}",
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64) hv/1.0",
            "prev_hash": prev,
        }
        digest = event_hash(canonical_bytes(event))
        event["hash"] = digest.hex()
        events.append(event)
        leaves.append(leaf_data(chain, seq + 1, digest))
        heads[chain] = (seq + 1, event["hash"])
    return events, leaves


def bench_verify(n: int, workdir: Path, repeats: int) -> dict:
    signer = Signer(ORIGIN, Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))
    start = time.perf_counter()
    events, leaves = synthetic_log(n)
    log = MerkleLog.from_leaf_data(leaves)
    sizes = sorted({max(1, n // 4), max(1, n // 2), max(1, 3 * n // 4), n})
    notes = [signer.sign_note(make_checkpoint_body(ORIGIN, s, log.root(s))) for s in sizes]
    path = write_bundle(workdir / "export", origin=ORIGIN, events=events, first_leaf=0, all_leaf_data=leaves,
                        checkpoints=notes, signer=signer, since=events[0]["time"], until=None,
                        created_at="2026-11-25T00:00:00.000000Z", verify=False)
    del events, leaves, log
    size_mb = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    built = time.perf_counter() - start
    print(f"export: {n} events, {len(sizes)} checkpoints, {size_mb:.1f} MB, built in {built:.1f} s")
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        report = verify_bundle(path, signer.vkey())
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
        assert report.ok and report.events == n, report.problems[:3]
    cpu, wall = statistics.median(cpus), statistics.median(walls)
    c = time.process_time()
    assert verify_bundle(path, signer.vkey(), strict=True).ok
    strict = time.process_time() - c
    result = {"events": n, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "events_per_cpu_s": round(n / cpu),
              "events_per_wall_s": round(n / wall), "best_events_per_cpu_s": round(n / min(cpus)),
              "strict_events_per_cpu_s": round(n / strict)}
    verdict = "PASS" if n / cpu >= VERIFY_TARGET else "FAIL"
    print(f"verify: {n / cpu:,.0f} events/s per CPU second (median of {repeats}; best {n / min(cpus):,.0f}); "
          f"wall {n / wall:,.0f} events/s [{verdict} >= {VERIFY_TARGET:,}/s]")
    print(f"verify --strict (canonical grammar of every line too): {n / strict:,.0f} events/s per CPU second (1 run)")
    return result


def bench_proofs(m: int, samples: int) -> dict:
    rng = random.Random(2)
    hashes = [leaf_hash(leaf_data(i % 3, i // 3, rng.randbytes(32))) for i in range(m)]
    start = time.perf_counter()
    log = MerkleLog.from_leaf_hashes(hashes)
    build = time.perf_counter() - start
    root = log.root()
    times = []
    for index in [m - 1, 0] + [rng.randrange(m) for _ in range(samples - 2)]:
        t = time.perf_counter()
        proof = log.inclusion_proof(index)
        times.append((time.perf_counter() - t) * 1000)
        assert verify_inclusion(hashes[index], index, m, proof, root)
    t = time.perf_counter()
    consistency = log.consistency_proof(m // 3, m)
    consistency_ms = (time.perf_counter() - t) * 1000
    p50, worst = statistics.median(times), max(times)
    verdict = "PASS" if worst < PROOF_TARGET_MS else "FAIL"
    print(f"inclusion proof, {m:,} leaves: cache build {build:.2f} s (one-off); per proof p50 {p50:.3f} ms, "
          f"max {worst:.3f} ms over {len(times)} indices [{verdict} < {PROOF_TARGET_MS:.0f} ms]; "
          f"consistency proof {consistency_ms:.3f} ms ({len(consistency)} hashes)")
    return {"leaves": m, "build_s": round(build, 3), "p50_ms": round(p50, 4), "max_ms": round(worst, 4),
            "samples": len(times), "consistency_ms": round(consistency_ms, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=None, help="events in the verified export (default 200,000)")
    parser.add_argument("--proof-leaves", type=int, default=None, help="leaves of the proof log (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = parser.parse_args()
    n = args.events or (3_000 if args.quick else 200_000)
    m = args.proof_leaves or (20_000 if args.quick else 1_000_000)
    print(f"python {sys.version.split()[0]}, cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="hv-bench-audit-") as tmp:
        verify = bench_verify(n, Path(tmp), repeats=1 if args.quick else 3)
    proofs = bench_proofs(m, samples=100)
    print(f"load after {os.getloadavg()[0]:.2f}")
    print("RESULT_JSON: " + json.dumps({"verify": verify, "inclusion": proofs, "quick": args.quick}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
