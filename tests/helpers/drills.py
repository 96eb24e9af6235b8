"""What every crash drill checks afterwards: nothing half-written is visible, and the audit chain verifies offline."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from audit.verify import verify_bundle


def export_verifies(vault, out: Path) -> int:
    """Export the whole trail and verify it against the signing key the vault holds (pinned); returns the event
    count. Fails the test with the verifier's first problem."""
    from vault.auditing import trail

    trail.write_export(vault, since=None, until=None, out=out)
    report = verify_bundle(out, trail.signer(vault).vkey())
    assert report.ok, report.problems[:3]
    return report.events


def blob_files(blob_dir: Path) -> set[str]:
    return {p.stem for p in blob_dir.glob("??/*.hvb")}


def record_rows(db_path: Path) -> dict[str, str | None]:
    """Record id -> OCR status, read straight from the SQLite file (a server may be running or dead)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return dict(conn.execute("SELECT id, ocr_status FROM records").fetchall())
    finally:
        conn.close()


def audit_actions(db_path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return [a for (a,) in conn.execute("SELECT action FROM audit_events")]
    finally:
        conn.close()
