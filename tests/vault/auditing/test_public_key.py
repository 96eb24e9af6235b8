"""Issue 14 item 8: an export verifies only against a key pinned out of band.

`healthvault audit verify` without `--key` refuses and says where the key comes from; `healthvault audit public-key`
(the operator, on the host) and `GET /v1/audit/public-key` (auditors, through the gate, audited) hand it over; an
export signed by a stranger's key, with that stranger's public_key.txt inside, fails against the vault's key."""

from __future__ import annotations

import json
import shutil

from click.testing import CliRunner
from sqlalchemy import select

from audit import bundle, verify
from audit.checkpoint import Signer
from audit.log import signer_from_key
from audit.models import AuditEvent
from tests.conftest import PASSPHRASE
from tests.helpers import login, register, staff
from vault.auditing import trail as audit_trail
from vault.cli import main


def _env(vault, backend: str) -> dict[str, str]:
    env = {"HEALTHVAULT_PASSPHRASE": PASSPHRASE.decode()}
    if backend == "postgres":
        env |= {"HEALTHVAULT_DATABASE_URL": vault.settings.database_url,
                "HEALTHVAULT_KEYSTORE_SCHEMA": vault.settings.keystore_schema}
    return env


def _export(client, vault, tmp_path):
    register(client, username="pk-patient")
    out = tmp_path / "export"
    audit_trail.write_export(vault, since=None, until=None, out=out)
    return out


def _resigned_by_stranger(export, tmp_path) -> tuple[object, Signer]:
    """The same events re-exported as a complete, self-consistent bundle signed by another key (with that key in
    public_key.txt): what an attacker who rewrote the trail would ship."""
    stranger = signer_from_key("vault.example/audit", b"\x07" * 32)
    events = [json.loads(line) for line in (export / "events.jsonl").read_text().splitlines()]
    leaves = (export / "leaves.bin").read_bytes()
    all_leaves = [leaves[i:i + verify.LEAF_SIZE] for i in range(0, len(leaves), verify.LEAF_SIZE)]
    manifest = json.loads((export / "manifest.json").read_text())
    hashes = [verify.leaf_hash(leaf) for leaf in all_leaves]
    root = verify.root_from_leaf_hashes(hashes)
    import base64

    note = stranger.sign_note(f"vault.example/audit\n{len(all_leaves)}\n{base64.b64encode(root).decode()}\n")
    forged = bundle.write_bundle(tmp_path / "forged", origin="vault.example/audit",
                                 events=[{**e["event"], "hash": e["hash"]} for e in events],
                                 first_leaf=manifest["first_leaf"], all_leaf_data=all_leaves, checkpoints=[note],
                                 signer=stranger, since=None, until=None, created_at=manifest["created_at"])
    return forged, stranger


def test_verify_without_a_key_refuses_and_says_how_to_get_one(client, vault, tmp_path):
    export = _export(client, vault, tmp_path)
    result = CliRunner().invoke(main, ["audit", "verify", str(export)])
    assert result.exit_code == 2
    assert "--key is required" in result.output and "healthvault audit public-key" in result.output
    assert "GET /v1/audit/public-key" in result.output and "VERIFIED" not in result.output


def test_public_key_command_prints_the_signing_vkey_and_is_audited(client, vault, backend, tmp_path, monkeypatch):
    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    export = _export(client, vault, tmp_path)
    result = CliRunner().invoke(main, ["audit", "public-key", "--data-dir", str(vault.settings.data_dir)],
                                env=_env(vault, backend))
    assert result.exit_code == 0, result.output
    vkey = result.output.strip().splitlines()[-1]
    assert vkey == audit_trail.signer(vault).vkey()
    with vault.session() as session:
        assert session.scalar(select(AuditEvent).where(AuditEvent.resource_type == "audit-public-key")) is not None
    pinned = CliRunner().invoke(main, ["audit", "verify", str(export), "--key", vkey])
    assert pinned.exit_code == 0 and "VERIFIED" in pinned.output and "(pinned)" in pinned.output


def test_auditors_read_the_public_key_over_http_others_do_not(client, vault):
    headers = {}
    for role in ("auditor", "auditadmin", "sysadmin", "doctor"):
        h = staff(client, vault, role, f"pk-{role}")
        h.pop("_secret")
        headers[role] = h
    register(client, username="pk-reader")
    headers["patient"] = login(client, "pk-reader")
    expected = audit_trail.signer(vault).vkey()
    for role in ("auditor", "auditadmin"):
        response = client.get("/v1/audit/public-key", headers=headers[role])
        assert response.status_code == 200, response.text
        body = response.json()
        assert body == {"vkey": expected, "signature": "ed25519", "origin": vault.settings.audit_origin}
        verify.parse_vkey(body["vkey"])
    for role in ("sysadmin", "doctor", "patient"):
        assert client.get("/v1/audit/public-key", headers=headers[role]).status_code == 403, role
    assert client.get("/v1/audit/public-key").status_code == 401
    with vault.session() as session:
        outcomes = [e.outcome for e in session.scalars(
            select(AuditEvent).where(AuditEvent.resource_type == "audit-public-key").order_by(AuditEvent.id))]
    assert outcomes == ["allow", "allow", "deny", "deny", "deny"]


def test_an_export_signed_by_a_stranger_fails_against_the_pinned_key(client, vault, tmp_path):
    export = _export(client, vault, tmp_path)
    forged, stranger = _resigned_by_stranger(export, tmp_path)
    assert verify.verify_bundle(forged, stranger.vkey()).ok  # well formed: only the key tells it apart
    vkey = audit_trail.signer(vault).vkey()
    report = verify.verify_bundle(forged, vkey)
    assert not report.ok
    assert "public_key.txt is not the pinned key" in report.problems
    assert any(p.startswith("manifest.sig: note: no signature by") for p in report.problems)
    refused = CliRunner().invoke(main, ["audit", "verify", str(forged), "--key", vkey])
    assert refused.exit_code == 1 and "FAILED" in refused.output
    unpinned = CliRunner().invoke(main, ["audit", "verify", str(forged)])  # the stranger's key is never taken
    assert unpinned.exit_code == 2 and "VERIFIED" not in unpinned.output
    # The genuine export with the stranger's key swapped into public_key.txt fails too.
    swapped = tmp_path / "swapped"
    shutil.copytree(export, swapped)
    (swapped / "public_key.txt").write_text(stranger.vkey() + "\n")
    assert not verify.verify_bundle(swapped, vkey).ok


def test_cli_export_times_need_an_offset(tmp_path):
    """The operator's --since/--until follow the same rule as every client time (issue 14 item 2): refused before
    the vault is opened, with the reason, never a traceback."""
    for value in ("2026-01-01", "2026-01-01T00:00:00", "10000-01-01T00:00:00Z", "9999-12-31T23:00:00-05:00", "soon"):
        result = CliRunner().invoke(main, ["audit", "export", "--since", value, "--out", str(tmp_path / "x"),
                                           "--data-dir", str(tmp_path / "none")])
        assert result.exit_code == 2, (value, result.output)
        assert "--since" in result.output and "with an offset" in result.output and "Traceback" not in result.output
        assert not (tmp_path / "x").exists()
