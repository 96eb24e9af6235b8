"""Writes an audit export directory that `audit.verify.verify_bundle` checks offline.

Owns: the files of an export (events.jsonl, leaves.bin, checkpoints.txt, proofs.json, public_key.txt, events.csv,
manifest.json, manifest.sig; layouts documented in `audit.verify`), the manifest's statement of the algorithms the
export uses (the signer's: Ed25519 + SHA-256, or SM2 + SM3; and the event hashes met), and the promise that an
export is either complete and self-consistent or not there at all: it is built in a hidden sibling directory,
checked, fsynced and only then renamed into place.
Never: writes into a non-empty directory; writes an export whose events, leaves and checkpoints disagree (they are
checked first, and by default the finished directory is run through the verifier before it is published); holds
the private key (it signs through a `Signer`).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from audit.checkpoint import Signer
from audit.merkle import MerkleLog
from audit.verify import (
    CHECKPOINT_SEPARATOR,
    EVENT_FORMATS,
    EXPORT_FORMAT,
    HASHES,
    LEAF_SIZE,
    MANIFEST_NOTE_TAG,
    VerificationError,
    canonical_bytes,
    event_hash,
    event_line,
    event_version,
    leaf_data,
    verify_bundle,
    verify_note,
)

CSV_COLUMNS = ("leaf", "chain", "seq", "time", "actor", "actor_role", "action", "resource_type", "resource_id",
               "patient", "outcome", "reason", "grant_id", "request_id", "client_addr", "user_agent", "prev_hash",
               "hash")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class _HashingFile:
    """A binary file that hashes what is written to it and is fsynced on close (its hash goes in the manifest)."""

    def __init__(self, path: Path, alg: str) -> None:
        self._f = open(path, "xb")
        self._sha = HASHES[alg]()

    def write(self, data: bytes) -> None:
        self._f.write(data)
        self._sha.update(data)

    def close(self) -> str:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return self._sha.hexdigest()


def _write(path: Path, data: bytes, alg: str) -> str:
    f = _HashingFile(path, alg)
    f.write(data)
    return f.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _csv_cell(value: object) -> str:
    """Spreadsheet-safe text: a leading = + - @ tab or CR would make Excel/WPS run the cell as a formula (user agents
    and reasons are caller-controlled), so such cells get a leading apostrophe. The JSON Lines file stays exact."""
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _optional_str(name: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a string (RFC 3339) or None")


def write_bundle(out_dir: str | os.PathLike[str], *, origin: str, events: list[dict[str, Any]], first_leaf: int,
                 all_leaf_data: list[bytes], checkpoints: list[str], signer: Signer, since: str | None,
                 until: str | None, created_at: str | None, verify: bool = True) -> Path:
    """Write the export of `events` (leaves [first_leaf, first_leaf + len(events)) of the log) and return its path.

    events: dicts with the event keys (prev_hash included) and optionally "hash" (hex), which must equal the hash
    recomputed here. all_leaf_data: the 42-byte leaf data of every leaf [0, newest checkpoint size). checkpoints:
    signed notes by `signer`, tree sizes increasing, the newest covering all leaves. Raises VerificationError when
    any of them disagree, FileExistsError when out_dir is not empty.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"refusing to write an export into non-empty {out}")
    for name, value in (("since", since), ("until", until), ("created_at", created_at)):
        _optional_str(name, value)
    if type(first_leaf) is not int or first_leaf < 0 or first_leaf + len(events) > len(all_leaf_data):
        raise VerificationError("events must be leaves [first_leaf, first_leaf + n) of all_leaf_data")
    if any(len(d) != LEAF_SIZE for d in all_leaf_data):
        raise VerificationError(f"leaf data is {LEAF_SIZE} bytes each")

    parsed = [verify_note(note, signer.verifier_key()) for note in checkpoints]
    if not parsed or parsed[-1].size != len(all_leaf_data):
        raise VerificationError("the newest checkpoint must cover exactly all_leaf_data")
    if any(cp.origin != origin for cp in parsed) or any(a.size >= b.size for a, b in itertools.pairwise(parsed)):
        raise VerificationError("checkpoints: all of this origin, tree sizes increasing")
    alg = signer.hash_name
    log = MerkleLog.from_leaf_data(all_leaf_data, alg)
    for i, cp in enumerate(parsed, 1):
        if log.root(cp.size) != cp.root:
            raise VerificationError(f"checkpoint {i} (size {cp.size}) does not match the leaves")
    proofs = {"consistency": [{"from": a.size, "to": b.size, "proof": [h.hex() for h in log.consistency_proof(
        a.size, b.size)]} for a, b in itertools.pairwise(parsed)]}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        files, versions = _write_files(tmp, events, first_leaf, all_leaf_data, checkpoints, proofs, signer)
        algorithms = {**signer.verifier_key().algorithms, "event_hash": sorted(EVENT_FORMATS[v] for v in versions)}
        manifest = {"format": EXPORT_FORMAT, "origin": origin, "first_leaf": first_leaf, "event_count": len(events),
                    "tree_size": len(all_leaf_data), "since": since, "until": until, "created_at": created_at,
                    "files": files, "algorithms": algorithms}
        digest = _write(tmp / "manifest.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(), alg)
        _write(tmp / "manifest.sig", signer.sign_note(f"{MANIFEST_NOTE_TAG}\n{digest}\n").encode("utf-8"), alg)
        if verify:
            report = verify_bundle(tmp, signer.vkey())
            if not report.ok:
                raise VerificationError(f"the export does not verify: {report.problems[0]}")
        _fsync_dir(tmp)
        os.rename(tmp, out)  # atomic; replaces out only if it is an empty directory
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_files(tmp: Path, events: list[dict[str, Any]], first_leaf: int, all_leaf_data: list[bytes],
                 checkpoints: list[str], proofs: dict[str, Any], signer: Signer) -> tuple[dict[str, str], set[int]]:
    """Every file but the manifest; returns ({file name: hex hash with the signer's hash}, event versions met)."""
    alg = signer.hash_name
    lines, table = _HashingFile(tmp / "events.jsonl", alg), _HashingFile(tmp / "events.csv", alg)
    versions: set[int] = set()
    text = io.StringIO()
    rows = csv.writer(text, lineterminator="\r\n")
    rows.writerow(CSV_COLUMNS)
    table.write("\ufeff".encode("utf-8"))  # BOM: spreadsheet programs then read the CSV as UTF-8
    for i, given in enumerate(events):
        event = {k: v for k, v in given.items() if k != "hash"}
        canonical = canonical_bytes(event)
        digest = event_hash(canonical)
        versions.add(event_version(canonical))
        leaf = first_leaf + i
        if "hash" in given and given["hash"] != digest.hex():
            raise VerificationError(f"event at leaf {leaf}: given hash is not the hash of the event")
        if leaf_data(event["chain"], event["seq"], digest) != all_leaf_data[leaf]:
            raise VerificationError(f"event at leaf {leaf}: does not match all_leaf_data[{leaf}]")
        lines.write(event_line(canonical, digest))
        rows.writerow([leaf] + [_csv_cell(event[c]) for c in CSV_COLUMNS[1:-1]] + [digest.hex()])
        if text.tell() > 1 << 20:
            table.write(text.getvalue().encode("utf-8"))
            text.seek(0)
            text.truncate()
    table.write(text.getvalue().encode("utf-8"))
    return {
        "events.jsonl": lines.close(),
        "events.csv": table.close(),
        "leaves.bin": _write(tmp / "leaves.bin", b"".join(all_leaf_data), alg),
        "checkpoints.txt": _write(tmp / "checkpoints.txt", CHECKPOINT_SEPARATOR.join(checkpoints).encode("utf-8"),
                                  alg),
        "proofs.json": _write(tmp / "proofs.json", (json.dumps(proofs) + "\n").encode("ascii"), alg),
        "public_key.txt": _write(tmp / "public_key.txt", (signer.vkey() + "\n").encode("utf-8"), alg),
    }, versions
