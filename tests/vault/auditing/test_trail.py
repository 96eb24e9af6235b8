"""The hash-chained, checkpointed audit trail on the real databases (SQLite always, PostgreSQL when reachable)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from audit import log, trail, verify
from audit.models import AuditEvent, Leaf
from tests.helpers import login, make_id_number, png_bytes, register, staff, upload
from tests.helpers.chains import check_chains
from tests.helpers.scan import find_in_bytes
from vault.access import audit_append
from vault.auditing import trail as audit_trail
from vault.identity import RequestContext

CTX = RequestContext(request_id="t", client_addr="127.0.0.1", user_agent="pytest")


def _staff(client, vault, role: str, username: str) -> dict:
    headers = staff(client, vault, role, username)
    headers.pop("_secret")
    return headers


def _busy_session(client, n_patients: int = 3, reads: int = 10) -> list[dict]:
    people = []
    for i in range(n_patients):
        person = register(client, username=f"person{i}", real_name=f"患者{i}号测试",
                          id_number=make_id_number(birth="19700101", seq=f"{i:03d}"), phone=f"1390000{i:04d}")
        headers = login(client, f"person{i}")
        record_id = upload(client, headers, png_bytes(b"r%d" % i), title=f"化验单{i}").json()["record_id"]
        for _ in range(reads):
            client.get(f"/v1/records/{record_id}", headers=headers)
        client.get(f"/v1/records/{record_id}/content", headers=headers)
        people.append({**person, "record_id": record_id, "headers": headers})
    client.post("/v1/auth/login", json={"username": "person0", "password": "Wr0ng-Passw0rd!"})
    return people


def test_every_event_is_chained_and_checkpoints_cover_them(client, vault):
    _busy_session(client)
    with vault.session() as session:
        total = check_chains(session)
    assert total > 40
    checkpoint = audit_trail.checkpoint_now(vault)
    assert checkpoint.tree_size == total
    parsed = verify.verify_note(checkpoint.note, audit_trail.signer(vault).vkey())
    assert parsed.size == total and parsed.origin == vault.settings.audit_origin
    assert audit_trail.checkpoint_now(vault) is None  # nothing new
    # Inclusion of one event and consistency with a later checkpoint, from the stored log.
    register(client, username="latecomer")
    later = audit_trail.checkpoint_now(vault)
    with vault.session() as session:
        leaf = session.get(Leaf, 7)
        proof = log.inclusion_proof(session, cache=vault.log_cache, leaf_index=7, size=later.tree_size)
        leaf_hash = verify.leaf_hash(verify.leaf_data(leaf.chain_id, leaf.seq, bytes(leaf.event_hash)))
        assert verify.verify_inclusion(leaf_hash, 7, later.tree_size, proof, later.root_hash)
        consistency = log.consistency_proof(session, cache=vault.log_cache, size1=total, size2=later.tree_size)
    assert verify.verify_consistency(total, later.tree_size, consistency, checkpoint.root_hash, later.root_hash)


def test_checkpoint_is_due_after_n_events_or_t_seconds(client, vault, clock):
    register(client, username="timer")
    assert audit_trail.checkpoint_due(vault)  # no checkpoint yet
    audit_trail.checkpoint_now(vault)
    assert not audit_trail.checkpoint_due(vault)
    login(client, "timer")
    assert not audit_trail.checkpoint_due(vault)
    clock.advance(seconds=vault.settings.audit_checkpoint_every_seconds + 1)
    assert audit_trail.checkpoint_due(vault)
    audit_trail.checkpoint_now(vault)
    object.__setattr__(vault.settings, "audit_checkpoint_every_events", 3)
    for _ in range(3):
        client.get("/v1/records", headers=login(client, "timer"))
    assert audit_trail.checkpoint_due(vault)


@pytest.mark.parametrize("table", ["audit_events", "audit_leaves", "audit_checkpoints"])
def test_audit_tables_refuse_update_and_delete(client, vault, backend, table):
    _busy_session(client, n_patients=1, reads=1)
    audit_trail.checkpoint_now(vault)
    statements = [f"UPDATE {table} SET tree_size = tree_size" if table == "audit_checkpoints"
                  else f"UPDATE {table} SET seq = seq", f"DELETE FROM {table}"]
    if backend == "postgres":
        statements.append(f"TRUNCATE {table}")
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"):
            with vault.engine.begin() as conn:
                conn.exec_driver_sql(statement)
    with pytest.raises(DBAPIError, match="append-only"):
        with vault.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE audit_chain_heads SET seq = seq - 1")
    with vault.session() as session:
        check_chains(session)


def test_no_phi_in_audit_rows_or_exports(client, vault, tmp_path):
    """No PHI, and no raw patient id in any field (issue 14 item 7): a patient is always named by its pseudonym."""
    people = _busy_session(client)
    for person in people:  # events whose resource is the patient itself
        for path in ("/v1/records", "/v1/patients/me", "/v1/patients/me/access-log", "/v1/patients/me/consents"):
            assert client.get(path, headers=person["headers"]).status_code == 200, path
    secrets = [p[k] for p in people for k in ("real_name", "id_number", "phone", "patient_id")] + ["化验单0"]
    with vault.session() as session:
        rows = session.scalars(select(AuditEvent)).all()
    blob = "\n".join(json.dumps(trail.canonical_event(r), ensure_ascii=False) for r in rows).encode()
    assert find_in_bytes(blob, secrets) == []
    out = tmp_path / "export"
    audit_trail.write_export(vault, since=None, until=None, out=out)
    for path in out.iterdir():
        assert find_in_bytes(path.read_bytes(), secrets) == [], path.name


def _cli(*args, vault) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vault.cli", *args], capture_output=True, text=True, timeout=120)


def test_export_verifies_offline_and_a_tampered_event_is_named(client, vault, tmp_path):
    _busy_session(client, n_patients=5, reads=30)  # hundreds of events
    out = tmp_path / "export"
    result = audit_trail.write_export(vault, since=None, until=None, out=out)
    assert result["event_count"] >= 150
    vkey = audit_trail.signer(vault).vkey()
    ok = _cli("audit", "verify", str(out), "--key", vkey, vault=vault)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = (out / "events.jsonl").read_bytes().splitlines(keepends=True)
    victim = 42
    lines[victim] = lines[victim].replace(b'"outcome":"allow"', b'"outcome":"deny"', 1)
    (out / "events.jsonl").write_bytes(b"".join(lines))
    bad = _cli("audit", "verify", str(out), "--key", vkey, vault=vault)
    assert bad.returncode == 1
    first_bad = [line for line in bad.stdout.splitlines() if line.startswith("FIRST BAD: ")]
    assert first_bad and f"leaf {result['first_leaf'] + victim}" in first_bad[0]


def test_time_range_export_verifies(client, vault, clock, tmp_path):
    register(client, username="early")
    clock.advance(days=2)
    start = clock()
    _busy_session(client, n_patients=2, reads=3)
    clock.advance(days=2)
    end = clock()
    register(client, username="late-one")
    out = tmp_path / "range"
    result = audit_trail.write_export(vault, since=start, until=end, out=out)
    report = verify.verify_bundle(out, audit_trail.signer(vault).vkey())
    assert report.ok, report.problems
    assert 0 < result["event_count"] < result["tree_size"]
    with vault.session() as session:
        in_range = session.scalar(select(func.count()).select_from(AuditEvent)
                                  .where(AuditEvent.occurred_at >= start, AuditEvent.occurred_at < end))
    assert result["event_count"] == in_range


def test_audit_search_is_for_auditors_only_and_is_audited(client, vault):
    people = _busy_session(client, n_patients=2, reads=2)
    auditor = _staff(client, vault, "auditor", "auditor1")
    for role, name in (("doctor", "doc1"), ("sysadmin", "sys1"), ("secadmin", "sec1")):
        denied = client.get("/v1/audit/events", headers=_staff(client, vault, role, name))
        assert denied.status_code == 403
    assert client.get("/v1/audit/events", headers=people[0]["headers"]).status_code == 403
    page = client.get("/v1/audit/events", headers=auditor, params={"action": "record.read", "limit": 3}).json()
    assert len(page["items"]) == 3 and all(e["action"] == "record.read" for e in page["items"])
    seen, cursor = [], None
    while True:
        params = {"action": "record.read", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/audit/events", headers=auditor, params=params).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 4 and seen == sorted(seen, reverse=True)
    patient_p = audit_append.patient_pseudonym(vault, people[1]["patient_id"])
    mine = client.get("/v1/audit/events", headers=auditor, params={"patient": patient_p, "limit": 500}).json()
    assert mine["items"] and all(e["patient"] == patient_p for e in mine["items"])
    denials = client.get("/v1/audit/events", headers=auditor, params={"outcome": "deny"}).json()["items"]
    assert {e["reason"] for e in denials} >= {"no-policy"}
    assert any(e["action"] == "audit.read" and e["outcome"] == "allow" for e in
               client.get("/v1/audit/events", headers=auditor, params={"action": "audit.read"}).json()["items"])


def test_export_through_the_api_with_progress(client, vault, tmp_path):
    import io
    import tarfile
    import time

    _busy_session(client, n_patients=2, reads=2)
    auditor = _staff(client, vault, "auditor", "auditor2")
    patient = login(client, "person0")
    assert client.post("/v1/audit/exports", headers=patient, json={}).status_code == 403
    started = client.post("/v1/audit/exports", headers=auditor, json={})
    assert started.status_code == 202
    export_id = started.json()["export_id"]
    for _ in range(100):
        status = client.get(f"/v1/audit/exports/{export_id}", headers=auditor).json()
        if status["status"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert status["status"] == "done" and status["event_count"] > 0 and status["done"] == status["total"]
    archive = client.get(f"/v1/audit/exports/{export_id}/archive", headers=auditor)
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(tmp_path, filter="data")
    report = verify.verify_bundle(tmp_path / f"audit-export-{export_id}", audit_trail.signer(vault).vkey())
    assert report.ok, report.problems


def test_patients_see_who_read_their_records(client, vault):
    people = _busy_session(client, n_patients=2, reads=2)
    log_page = client.get("/v1/patients/me/access-log", headers=people[0]["headers"]).json()
    actions = {e["action"] for e in log_page["items"]}
    assert {"record.create", "record.read", "record.download"} <= actions
    assert all(e["actor_name"] == "you" and e["actor_role"] == "patient" for e in log_page["items"])
    ids = {e["resource_id"] for e in log_page["items"]}
    assert people[1]["record_id"] not in ids
    # The other patient's denied attempt shows up in the owner's log.
    client.get(f"/v1/records/{people[0]['record_id']}", headers=people[1]["headers"])
    entries = client.get("/v1/patients/me/access-log", headers=people[0]["headers"]).json()["items"]
    assert entries[0]["outcome"] == "deny" and entries[0]["actor_name"] == "another account"


def test_every_event_carries_time_user_type_outcome_object_and_request(client, vault):
    """AUD-2: the fields an assessor looks for are present on every event an API session produced."""
    _busy_session(client, n_patients=2, reads=2)
    client.get("/v1/records/00000000-0000-4000-8000-000000000000", headers=login(client, "person1"))
    with vault.session() as session:
        events = session.scalars(select(AuditEvent)).all()
    assert events
    for event in events:
        assert event.occurred_at and event.actor and event.actor_role and event.action and event.outcome
        assert event.resource_type and event.request_id and event.hash and event.prev_hash
        if event.actor_role != "system":  # the in-process extraction worker has no client
            assert event.client_addr and event.user_agent
        if event.resource_type == "record":
            assert event.resource_id
