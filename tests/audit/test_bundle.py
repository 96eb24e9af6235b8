"""Export bundles: a synthetic log of 300 events on 3 chains verifies, and each kind of tampering is caught and named.

Each test copies a pristine export, changes it the way a forger (or a broken disk) would, and checks the FIRST
problem the verifier reports, since that is the line an assessor acts on.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from audit.bundle import write_bundle
from audit.verify import LEAF_SIZE, canonical_bytes, event_hash, event_line, verify_bundle
from tests.helpers.audit_synth import ORIGIN, build_bundle, fixed_signer, make_log, rechain, sign_checkpoints

ROOT = Path(__file__).resolve().parents[2]
SIZES = (60, 150, 240, 300)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, list[dict]]:
    return build_bundle(tmp_path_factory.mktemp("pristine") / "export", n=300, sizes=SIZES)


@pytest.fixture
def export(pristine, tmp_path) -> Path:
    shutil.copytree(pristine[0], tmp_path / "export")
    return tmp_path / "export"


@pytest.fixture
def events(pristine) -> list[dict]:
    return pristine[1]


def key() -> str:
    return fixed_signer().vkey()


def lines(path: Path) -> list[bytes]:
    return (path / "events.jsonl").read_bytes().splitlines(keepends=True)


def first_problem(path: Path, vkey: str | None = None) -> str:
    report = verify_bundle(path, vkey or key())
    assert not report.ok and report.problems
    return report.problems[0]


def where_chain_changes(events: list[dict], start: int, same: bool) -> int:
    """An index i >= start where events i and i+1 are (or are not) of the same chain."""
    return next(i for i in range(start, len(events) - 1) if (events[i]["chain"] == events[i + 1]["chain"]) == same)


def test_pristine_export_verifies(export):
    report = verify_bundle(export, key())
    assert report.ok, report.problems
    assert (report.events, report.tree_size, report.checkpoints, report.key_pinned) == (300, 300, 4, True)
    assert report.key == key() and report.notes == []


def test_unpinned_key_verifies_but_says_so(export):
    report = verify_bundle(export)
    assert report.ok and not report.key_pinned
    assert any("NOT pinned" in n for n in report.notes)


def test_one_byte_changed_is_a_named_hash_mismatch(export, events):
    data = lines(export)
    data[100] = data[100].replace(b'"actor":"ps_', b'"actor":"qs_', 1)
    (export / "events.jsonl").write_bytes(b"".join(data))
    e = events[100]
    assert first_problem(export) == f"event at leaf 100 (chain {e['chain']} seq {e['seq']}): hash mismatch"


def test_a_changed_hash_field_is_a_hash_mismatch(export, events):
    data = lines(export)
    h = events[7]["hash"]
    data[7] = data[7].replace(h.encode(), (h[:-1] + ("0" if h[-1] != "0" else "1")).encode())
    (export / "events.jsonl").write_bytes(b"".join(data))
    assert first_problem(export).startswith("event at leaf 7 (chain ")
    assert first_problem(export).endswith("hash mismatch")


def test_deleted_event_same_chain_next_is_a_gap(export, events):
    i = where_chain_changes(events, 100, same=True)
    data = lines(export)
    del data[i]
    (export / "events.jsonl").write_bytes(b"".join(data))
    c, s = events[i]["chain"], events[i]["seq"]
    assert first_problem(export) == f"gap in seq: chain {c} expected {s} got {s + 1} (event at leaf {i})"


def test_deleted_event_other_chain_next_names_the_missing_leaf(export, events):
    i = where_chain_changes(events, 100, same=False)
    data = lines(export)
    del data[i]
    (export / "events.jsonl").write_bytes(b"".join(data))
    n = events[i + 1]
    assert first_problem(export) == (f"event at leaf {i} (chain {n['chain']} seq {n['seq']}): leaves.bin has chain "
                                     f"{events[i]['chain']} seq {events[i]['seq']} here (event missing, inserted or "
                                     f"reordered)")
    report = verify_bundle(export, key())
    assert any(p.startswith(f"gap in seq: chain {events[i]['chain']} expected {events[i]['seq']}")
               for p in report.problems)
    assert any("events.jsonl truncated: 299 events, the manifest says 300" in p for p in report.problems)


def test_swapped_events_are_caught(export, events):
    for same in (False, True):
        i = where_chain_changes(events, 50 if same else 150, same=same)
        data = lines(export)
        data[i], data[i + 1] = data[i + 1], data[i]
        (export / "events.jsonl").write_bytes(b"".join(data))
        problem = first_problem(export)
        if same:
            c, s = events[i]["chain"], events[i]["seq"]
            assert problem == f"gap in seq: chain {c} expected {s} got {s + 1} (event at leaf {i})"
        else:
            assert problem.startswith(f"event at leaf {i} (chain {events[i + 1]['chain']} seq ")
            assert "leaves.bin has chain" in problem
        data[i], data[i + 1] = data[i + 1], data[i]
        (export / "events.jsonl").write_bytes(b"".join(data))
        assert verify_bundle(export, key()).ok


def test_truncated_events_file(export):
    raw = (export / "events.jsonl").read_bytes()
    (export / "events.jsonl").write_bytes(raw[:-40])
    assert first_problem(export) == "events.jsonl truncated: the line of leaf 299 has no newline"
    (export / "events.jsonl").write_bytes(b"".join(raw.splitlines(keepends=True)[:250]))
    assert first_problem(export) == "events.jsonl truncated: 250 events, the manifest says 300"


def test_altered_checkpoint_signature(export):
    text = (export / "checkpoints.txt").read_text("utf-8")
    notes = text.split("\n---\n")
    sig = notes[1].rsplit(" ", 1)[1].strip()
    middle = len(sig) // 2
    notes[1] = notes[1].replace(sig, sig[:middle] + ("A" if sig[middle] != "A" else "B") + sig[middle + 1:])
    (export / "checkpoints.txt").write_text("\n---\n".join(notes), "utf-8")
    assert first_problem(export) == f"checkpoint 2: note: invalid signature by {ORIGIN}"


def test_altered_checkpoint_root_is_a_bad_signature(export):
    text = (export / "checkpoints.txt").read_text("utf-8")
    (export / "checkpoints.txt").write_text(text.replace("\n150\n", "\n151\n"), "utf-8")
    assert first_problem(export) == f"checkpoint 2: note: invalid signature by {ORIGIN}"


def _forge_insert(export: Path, events: list[dict], at: int, rewrite_leaves: bool) -> None:
    """Insert an event at leaf `at` into its chain, recompute the rest of that chain (seq, prev_hash, hash)."""
    extra = dict(events[at], actor="ps_forged", time=events[at]["time"])
    forged, leaves = rechain(events[:at] + [extra] + events[at:])
    (export / "events.jsonl").write_bytes(b"".join(
        event_line(canonical_bytes({k: v for k, v in e.items() if k != "hash"}), bytes.fromhex(e["hash"]))
        for e in forged))
    if rewrite_leaves:
        (export / "leaves.bin").write_bytes(b"".join(leaves))


def test_inserted_event_with_recomputed_chain_but_old_leaves(export, events):
    _forge_insert(export, events, 200, rewrite_leaves=False)
    problem = first_problem(export)
    assert problem.startswith("event at leaf 200 (chain ") and "leaves.bin" in problem


def test_inserted_event_with_recomputed_chain_and_leaves_has_no_matching_checkpoint(export, events):
    _forge_insert(export, events, 200, rewrite_leaves=True)
    report = verify_bundle(export, key())
    assert not report.ok
    assert report.problems[0] == ("checkpoint 3 inconsistent with leaves (size 240; leaves.bin changed within leaves "
                                  "[150, 240))")
    assert report.problems[1].startswith("checkpoint 4 inconsistent with leaves (size 300")
    assert "newest checkpoint (size 300) does not match leaves.bin (301 leaves)" in report.problems
    assert "last checkpoint (size 300) does not cover the events up to leaf 301" in report.problems


def test_leaves_bin_tampering(export):
    raw = bytearray((export / "leaves.bin").read_bytes())
    (export / "leaves.bin").write_bytes(raw[:-5])
    report = verify_bundle(export, key())
    assert "leaves.bin truncated: 12595 bytes is not a multiple of 42" in report.problems
    assert any(p.startswith("checkpoint 4 (size 300) beyond leaves.bin (299 leaves)") for p in report.problems)
    raw[10 * LEAF_SIZE + 9] ^= 1  # seq of leaf 10
    (export / "leaves.bin").write_bytes(raw)
    report = verify_bundle(export, key())
    assert any(p.startswith("leaves.bin: leaf 10 is chain ") for p in report.problems)
    assert report.problems[0].startswith("event at leaf 10 (chain ")


def test_missing_newest_checkpoint_does_not_cover_the_events(export):
    text = (export / "checkpoints.txt").read_text("utf-8")
    (export / "checkpoints.txt").write_text(text.rsplit("\n---\n", 1)[0] + "\n", "utf-8")
    report = verify_bundle(export, key())
    assert report.problems[0] == "newest checkpoint (size 240) does not match leaves.bin (300 leaves)"
    assert "last checkpoint (size 240) does not cover the events up to leaf 300" in report.problems


def test_bad_consistency_proof(export):
    proofs = json.loads((export / "proofs.json").read_text())
    p = proofs["consistency"][1]["proof"]
    p[0] = ("0" if p[0][0] != "0" else "1") + p[0][1:]
    (export / "proofs.json").write_text(json.dumps(proofs))
    assert first_problem(export) == "consistency proof from checkpoint 2 to 3 (size 150 -> 240) fails"
    proofs["consistency"].pop()
    (export / "proofs.json").write_text(json.dumps(proofs))
    assert "consistency proof from checkpoint 3 to 4 (size 240 -> 300) fails" in verify_bundle(export, key()).problems


def test_manifest_tampering(export):
    manifest = json.loads((export / "manifest.json").read_text())
    (export / "manifest.json").write_text(json.dumps({**manifest, "since": "2020-01-01T00:00:00.000000Z"}))
    assert first_problem(export) == "manifest.sig: signed hash is not the hash of manifest.json"


def test_csv_is_covered_by_the_manifest(export):
    with open(export / "events.csv", "ab") as f:
        f.write(b"999,0,0,forged\r\n")
    assert first_problem(export) == "manifest: hash mismatch for events.csv"
    (export / "events.csv").unlink()
    assert first_problem(export) == "missing file: events.csv"


def test_manifest_signature_altered(export):
    sig = (export / "manifest.sig").read_text("utf-8")
    (export / "manifest.sig").write_text(sig.replace("hv-audit-manifest/1", "hv-audit-manifest/2"), "utf-8")
    assert first_problem(export) == f"manifest.sig: note: invalid signature by {ORIGIN}"


def test_strict_mode_names_an_event_that_is_not_canonical(export, events):
    """A server bug, not tampering: the last event is written with an escaped slash and hashed that way."""
    data, leaves = lines(export), bytearray((export / "leaves.bin").read_bytes())
    last = data[-1]
    canonical = last[9:-76].replace(b"Mozilla/5.0", b"Mozilla\\/5.0")
    assert canonical != last[9:-76]
    data[-1] = event_line(canonical, event_hash(canonical))
    leaves[-32:] = event_hash(canonical)
    (export / "events.jsonl").write_bytes(b"".join(data))
    (export / "leaves.bin").write_bytes(bytes(leaves))
    e = events[-1]
    assert verify_bundle(export, key(), strict=True).problems[0] == (
        f"event at leaf 299 (chain {e['chain']} seq {e['seq']}): not the canonical encoding of a format-1 event")
    assert verify_bundle(export, key()).problems[0].startswith("checkpoint 4 inconsistent with leaves")
    assert "FIRST BAD: event at leaf 299" in run_cli(str(export), "--key", key(), "--strict").stdout


def test_wrong_pinned_key_fails(export):
    other = fixed_signer(seed=9).vkey()
    report = verify_bundle(export, other)
    assert not report.ok
    assert report.problems[0].startswith("checkpoint 1: note: no signature by vault.example/audit+")
    assert "public_key.txt is not the pinned key" in report.problems
    assert any(p.startswith("manifest.sig: note: no signature by") for p in report.problems)


def test_swapped_public_key_without_pinning_is_caught_by_signatures(export):
    (export / "public_key.txt").write_text(fixed_signer(seed=9).vkey() + "\n")
    report = verify_bundle(export)
    assert not report.ok and not report.key_pinned
    assert report.problems[0].startswith("checkpoint 1: note: no signature by")


def test_time_range_export_verifies_and_links_to_leaves_before_it(tmp_path):
    path, events = build_bundle(tmp_path / "range", n=300, sizes=SIZES, first=100, count=100)
    report = verify_bundle(path, key())
    assert report.ok, report.problems
    assert report.events == 100 and report.tree_size == 300
    manifest = json.loads((path / "manifest.json").read_text())
    assert (manifest["first_leaf"], manifest["event_count"], manifest["tree_size"]) == (100, 100, 300)
    # the first in-range event of a chain whose predecessor is outside the range: forge its prev_hash
    data = lines(path)
    first = events[100]
    assert first["seq"] > 0
    forged = dict(first, prev_hash="ab" * 32)
    forged.pop("hash")
    data[0] = event_line(canonical_bytes(forged), event_hash(canonical_bytes(forged)))
    (path / "events.jsonl").write_bytes(b"".join(data))
    assert first_problem(path) == (f"event at leaf 100 (chain {first['chain']} seq {first['seq']}): chain link "
                                   f"broken, prev_hash is not the hash of seq {first['seq'] - 1}")


def test_time_range_export_dropping_its_first_event_is_a_gap(tmp_path):
    path, _events = build_bundle(tmp_path / "range", n=300, sizes=SIZES, first=100, count=100)
    data = lines(path)
    (path / "events.jsonl").write_bytes(b"".join(data[1:]))
    manifest = path / "manifest.json"  # the forger would also have to re-sign the manifest: not possible
    problem = first_problem(path)
    assert problem.startswith(("event at leaf 100 (chain ", "gap in seq: chain "))
    assert manifest.exists()


def test_leaves_bin_not_gapless_is_named(tmp_path):
    signer = fixed_signer()
    events, leaves = make_log(40)
    bad = leaves[:5] + [leaves[5][:2] + (99).to_bytes(8, "big") + leaves[5][10:]] + leaves[6:]
    notes = sign_checkpoints(bad, (40,), signer)
    path = write_bundle(tmp_path / "gappy", origin=ORIGIN, events=[], first_leaf=0, all_leaf_data=bad,
                        checkpoints=notes, signer=signer, since=None, until=None, created_at=None, verify=False)
    report = verify_bundle(path, key())
    assert report.problems[0] == f"leaves.bin: leaf 5 is chain {events[5]['chain']} seq 99, expected seq " \
                                 f"{events[5]['seq']}"


def test_writer_refuses_inconsistent_input_and_non_empty_dirs(tmp_path):
    signer = fixed_signer()
    events, leaves = make_log(50)
    notes = sign_checkpoints(leaves, (20, 50), signer)
    args = dict(origin=ORIGIN, first_leaf=0, all_leaf_data=leaves, checkpoints=notes, signer=signer, since=None,
                until=None, created_at=None)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        write_bundle(tmp_path / "full", events=events, **args)
    from audit.verify import VerificationError
    wrong_hash = [dict(e) for e in events]
    wrong_hash[3]["hash"] = "00" * 32
    for bad in (dict(events=wrong_hash), dict(events=events[1:]), dict(events=events, checkpoints=notes[:1]),
                dict(events=events, checkpoints=sign_checkpoints(leaves, (20, 50), fixed_signer(seed=3))),
                dict(events=events, origin="other"), dict(events=events, checkpoints=notes[::-1])):
        with pytest.raises(VerificationError):
            write_bundle(tmp_path / "out", **{**args, **bad})
        assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial directory left behind
    (tmp_path / "empty").mkdir()
    assert verify_bundle(write_bundle(tmp_path / "empty", events=events, **args), key()).ok


def test_csv_is_spreadsheet_safe(pristine):
    text = (pristine[0] / "events.csv").read_text("utf-8-sig")
    assert text.startswith("leaf,chain,seq,time,actor,")
    assert "=HYPERLINK" not in text.replace("'=HYPERLINK", "")
    assert "急诊抢救" in text


def run_cli(*args: str, cwd: Path = ROOT, script: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *(script or ["-m", "audit.verify"]), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120, stdin=subprocess.DEVNULL)


def test_cli_exit_codes_and_first_bad_line(export, tmp_path, events):
    ok = run_cli(str(export), "--key", key())
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "VERIFIED" in ok.stdout and "(pinned)" in ok.stdout
    (tmp_path / "key.txt").write_text(key() + "\n")
    assert run_cli(str(export), "--key", str(tmp_path / "key.txt")).returncode == 0
    unpinned = run_cli(str(export))  # issue 14: the key inside the export proves nothing; refuse to go on
    assert unpinned.returncode == 2 and "VERIFIED" not in unpinned.stdout
    assert "--key is required" in unpinned.stderr and "healthvault audit public-key" in unpinned.stderr
    data = lines(export)
    data[3] = data[3].replace(b'"actor":"ps_', b'"actor":"qs_', 1)
    (export / "events.jsonl").write_bytes(b"".join(data))
    bad = run_cli(str(export), "--key", key())
    assert bad.returncode == 1
    e = events[3]
    assert f"FIRST BAD: event at leaf 3 (chain {e['chain']} seq {e['seq']}): hash mismatch" in bad.stdout.splitlines()


def test_verifier_runs_as_a_lone_copied_file(export, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(ROOT / "audit" / "verify.py", lone / "hv_verify.py")
    result = run_cli(str(export), "--key", key(), cwd=lone, script=["-I", str(lone / "hv_verify.py")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "VERIFIED" in result.stdout


def test_any_flipped_byte_anywhere_is_caught_and_never_crashes_the_verifier(pristine, tmp_path):
    rng = random.Random(11)
    names = sorted(p.name for p in pristine[0].iterdir())
    for i in range(120):
        target = tmp_path / f"flip{i}"
        shutil.copytree(pristine[0], target)
        name = names[i % len(names)]
        raw = bytearray((target / name).read_bytes())
        at = rng.randrange(len(raw))
        raw[at] ^= 1 << rng.randrange(8)
        (target / name).write_bytes(bytes(raw))
        report = verify_bundle(target, key())
        assert not report.ok, (name, at)
        report = verify_bundle(target, key(), strict=True)
        assert not report.ok, (name, at)
        shutil.rmtree(target)


@pytest.mark.parametrize("name,content", [
    ("manifest.json", b"[[[[" * 50000), ("manifest.json", b"\xff\xfe"), ("proofs.json", b"{\"consistency\": 5}"),
    ("checkpoints.txt", b"\xff" * 100), ("checkpoints.txt", b""), ("leaves.bin", b""), ("events.jsonl", b"\n\n"),
    ("public_key.txt", b"\x00"), ("manifest.sig", b""), ("events.jsonl", b'{"event":' + b"x" * 200 + b"\n"),
])
def test_garbage_files_are_problems_not_crashes(export, name, content):
    (export / name).write_bytes(content)
    report = verify_bundle(export, key())
    assert not report.ok and report.problems


@pytest.mark.parametrize("name", ["events.jsonl", "leaves.bin", "checkpoints.txt", "proofs.json", "public_key.txt",
                                  "events.csv", "manifest.json", "manifest.sig"])
def test_each_missing_file_is_named(export, name):
    (export / name).unlink()
    report = verify_bundle(export, key())
    assert not report.ok and f"missing file: {name}" in report.problems, report.problems
