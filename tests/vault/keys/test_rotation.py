"""Rotation in the running vault (issue 6, items 3, 7, 8): rotate root and KEKs, rewrap while the service keeps
serving, crash and resume, retire only what nothing references, the two-person root rotation over the API, the
CLI's profile rules, and the audit of every key event. SQLite and the real PostgreSQL; nothing mocked."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from audit.models import AuditEvent
from kms import LocalProvider
from kms.keystore_tables import ServiceKey
from tests.conftest import PASSPHRASE
from tests.helpers import login, png_bytes, register, staff, upload
from vault.access import audit_append
from vault.auditing import trail as audit_trail
from vault.db.models import Account, Base, Patient, Record
from vault.identity import Identity, RequestContext
from vault.keys import common as key_common
from vault.keys import events as key_events
from vault.keys import retirement, rewrap, rotation
from vault.keys import status as keystatus
from vault.records import service as records
from vault.runtime import open_vault

OPERATOR = Identity(account_id="cli:test-operator", role="operator")
CTX = RequestContext(request_id="test")
ROOT = Path(__file__).resolve().parents[3]  # the repository


# --- helpers ----------------------------------------------------------------------------------------------------------
def _populate(client, vault, *, patients: int = 3, per_patient: int = 3, prefix: str = "kr") -> list[dict]:
    people = []
    for p in range(patients):
        name = f"{prefix}-{p}"
        info = register(client, username=name)
        headers = login(client, name)
        files = {}
        for r in range(per_patient):
            data = png_bytes(f"{name}-record-{r}".encode())
            response = upload(client, headers, data, category="other", title=f"title {p}/{r}")
            assert response.status_code == 201, response.text
            files[response.json()["record_id"]] = data
        people.append({"patient_id": info["patient_id"], "headers": headers, "files": files, "username": name})
    return people


def _snapshot(vault) -> dict:
    """Every stored byte except the wrapped DEKs: row values of patients and records, and the blob files."""
    out = {}
    with vault.session() as session:
        for model in (Patient, Record):
            table = model.__table__
            cols = [c for c in table.columns if c.name != "wrapped_dek"]
            for row in session.execute(select(*cols).order_by(table.c.id)):
                out[(table.name, row[0])] = tuple(row)
    for path in sorted(Path(vault.settings.blob_dir).rglob("*")):
        if path.is_file() and "tmp" not in path.parts:
            out[("blob", str(path))] = path.read_bytes()
    return out


def _wrapped(vault) -> dict:
    with vault.session() as session:
        return {**{("patients", i): w for i, w in session.execute(select(Patient.id, Patient.wrapped_dek))},
                **{("records", i): w for i, w in session.execute(select(Record.id, Record.wrapped_dek))}}


def _read_everything(client, people) -> None:
    for person in people:
        assert client.get("/v1/patients/me", headers=person["headers"]).status_code == 200
        for record_id, data in person["files"].items():
            meta = client.get(f"/v1/records/{record_id}", headers=person["headers"])
            assert meta.status_code == 200, meta.text
            content = client.get(f"/v1/records/{record_id}/content", headers=person["headers"])
            assert content.status_code == 200 and content.content == data


def _events(vault, action: str | None = None) -> list[AuditEvent]:
    with vault.session() as session:
        query = select(AuditEvent).order_by(AuditEvent.id)
        if action:
            query = query.where(AuditEvent.action == action)
        return list(session.scalars(query))


def _local_only(vault) -> None:
    if vault.settings.kms_provider != "local":
        pytest.skip("exercises the local provider's key file")


# --- rotate, rewrap, retire -------------------------------------------------------------------------------------------
def test_rotate_root_and_all_keks_rewrap_retire_and_everything_still_reads(client, vault):
    people = _populate(client, vault)
    before, wrapped_before = _snapshot(vault), _wrapped(vault)
    status = keystatus.compute_status(vault)
    assert status.deks_under_old_kek == 0 and [v.version for v in status.root_versions] == [1]
    assert [(k.version, k.keks, k.deks) for k in status.kek_versions] == [(1, 3, 12)]

    rotated = rotation.rotate_root_cli(vault, identity=OPERATOR, ctx=CTX, profile="development")
    assert rotated.status == "executed" and rotated.new_version == 2 and vault.keys.current_root_version() == 2
    assert rotation.rotate_all_keks(vault, identity=OPERATOR, ctx=CTX, batch_size=2) == 3
    late = upload(client, people[0]["headers"], png_bytes(b"after rotation"), category="other")
    people[0]["files"][late.json()["record_id"]] = png_bytes(b"after rotation")
    status = keystatus.compute_status(vault)
    assert status.keks_under_old_root == 3 and status.service_keys_under_old_root >= 2
    assert status.deks_under_old_kek == 12  # 3 profiles + 9 records; the late upload is already under KEK v2
    assert [(k.version, k.keks, k.deks) for k in status.kek_versions] == [(1, 3, 12), (2, 3, 1)]

    job = rewrap.rewrap(vault, identity=OPERATOR, ctx=CTX, batch_size=2)
    assert job.status == "done" and job.failed == 0 and job.rewrapped == 3 + status.service_keys_under_old_root + 12
    status = keystatus.compute_status(vault)
    assert (status.keks_under_old_root, status.service_keys_under_old_root, status.deks_under_old_kek) == (0, 0, 0)
    assert status.rewrap_job.job_id == job.job_id and status.rewrap_job.status == "done"

    after = _snapshot(vault)
    del after[("records", late.json()["record_id"])]
    after = {k: v for k, v in after.items() if not (k[0] == "blob" and late.json()["record_id"] in k[1])}
    assert after == before  # no data ciphertext, no blob byte was rewritten
    moved = _wrapped(vault)
    assert all(moved[k] != w for k, w in wrapped_before.items())  # every old wrap moved
    _read_everything(client, people)
    assert rewrap.rewrap(vault, identity=OPERATOR, ctx=CTX).rewrapped == 0  # idempotent

    result = retirement.retire(vault, identity=OPERATOR, ctx=CTX, grace_seconds=0)
    assert result.root_versions == [1] and result.kek_versions == 3 and result.refused == []
    assert vault.keys.root_versions() == (2,)
    assert vault.keystore.kek_version_counts() == {2: 3}
    if vault.settings.kms_provider == "local":
        assert LocalProvider.open(vault.settings.root_key_path, PASSPHRASE).versions() == (2,)
    _read_everything(client, people)
    reopened = open_vault(vault.settings, PASSPHRASE, migrate=False)  # a fresh process, nothing cached
    try:
        for (table, row_id), blob in _wrapped(reopened).items():
            owner = row_id if table == "patients" else next(p["patient_id"] for p in people
                                                              if row_id in p["files"])
            assert reopened.keys.open_data_key(owner, blob)
    finally:
        reopened.close()

    actions = [(e.action, e.resource_type) for e in _events(vault) if e.action.startswith("key.")]
    assert ("key.rotate", "root-key") in actions and ("key.rotate", "patient-kek") in actions
    assert ("key.rewrap", "records-dek") in actions and ("key.rewrap", "patient-kek") in actions
    assert ("key.retire", "root-key") in actions and ("key.retire", "patient-kek") in actions
    key_events = json.dumps([[str(v) for v in (e.actor, e.resource_id, e.patient_pseudonym, e.reason)]
                             for e in _events(vault) if e.action.startswith("key.")])
    assert not any(p["patient_id"] in key_events for p in people)  # pseudonyms only


def test_single_patient_kek_rotation_and_retire_refusals(client, vault, clock):
    object.__setattr__(vault.settings, "idle_timeout_seconds", 10**7)
    people = _populate(client, vault, patients=2, per_patient=2)
    target = people[0]["patient_id"]
    assert rotation.rotate_kek(vault, patient_id=target, identity=OPERATOR, ctx=CTX) == 2
    refused = retirement.retire(vault, identity=OPERATOR, ctx=CTX, grace_seconds=0)
    assert refused.kek_versions == 0 and any("still wrap DEKs" in r for r in refused.refused)
    rewrap.rewrap(vault, identity=OPERATOR, ctx=CTX)
    young = retirement.retire(vault, identity=OPERATOR, ctx=CTX, grace_seconds=3600)
    assert young.kek_versions == 0 and any("grace period" in r for r in young.refused)
    clock.advance(hours=2)
    done = retirement.retire(vault, identity=OPERATOR, ctx=CTX, grace_seconds=3600)
    assert done.kek_versions == 1 and done.refused == []
    assert [r.version for r in vault.keystore.patient_keks(target)] == [2]
    assert [r.version for r in vault.keystore.patient_keks(people[1]["patient_id"])] == [1]
    _read_everything(client, people)
    event = _events(vault, "key.rotate")[-1]
    assert event.patient_pseudonym == audit_append.patient_pseudonym(vault, target) and target not in str(event.reason)


def test_rewrap_killed_halfway_resumes_in_a_new_process(client, vault):
    people = _populate(client, vault, patients=3, per_patient=4)
    rotation.rotate_root_cli(vault, identity=OPERATOR, ctx=CTX, profile="development")
    rotation.rotate_all_keks(vault, identity=OPERATOR, ctx=CTX)
    waiting = keystatus.compute_status(vault).deks_under_old_kek
    assert waiting == 15

    class Killed(BaseException):
        pass

    seen = []

    def die_after_three_dek_batches(view):
        seen.append(view)
        if view.phase == "records" and sum(v.phase == "records" for v in seen) == 4:  # phase change + 3 batches
            raise Killed()

    with pytest.raises(Killed):
        rewrap.rewrap(vault, identity=OPERATOR, ctx=CTX, batch_size=2, progress=die_after_three_dek_batches)
    job = vault.keystore.unfinished_rewrap_job()
    assert job is not None and job.phase == "records" and job.cursor
    halfway = keystatus.compute_status(vault)
    assert halfway.deks_under_old_kek == 12 - 6  # profiles done, 3 record batches of 2 done, 6 records left
    assert halfway.rewrap_job.status == "running" and halfway.rewrap_job.scanned < halfway.rewrap_job.total

    resumed_in = open_vault(vault.settings, PASSPHRASE, migrate=False)
    try:
        progress = []
        done = rewrap.rewrap(resumed_in, identity=OPERATOR, ctx=CTX, batch_size=2, progress=progress.append)
        assert done.job_id == job.id and done.status == "done" and done.failed == 0
        assert {v.phase for v in progress} == {"records", "patient_exports", "done"}  # it did not start over
        assert progress[-1].status == "done" and progress[-1].scanned == progress[-1].total
        assert keystatus.compute_status(resumed_in).deks_under_old_kek == 0
        again = rewrap.rewrap(resumed_in, identity=OPERATOR, ctx=CTX)
        assert again.job_id != job.id and again.rewrapped == 0
    finally:
        resumed_in.close()
    _read_everything(client, people)
    reasons = [e.reason for e in _events(vault, "key.rewrap") if e.resource_type == "rewrap-job"]
    assert any(r.startswith("started") for r in reasons) and any(r.startswith("resumed phase=records") for r in reasons)


def test_rewrap_cli_killed_with_sigkill_then_resumed(client, vault, backend):
    if backend != "sqlite":
        pytest.skip("the CLI finds the data from the data directory alone on the embedded default")
    _local_only(vault)
    people = _populate(client, vault, patients=3, per_patient=5)
    rotation.rotate_root_cli(vault, identity=OPERATOR, ctx=CTX, profile="development")
    rotation.rotate_all_keks(vault, identity=OPERATOR, ctx=CTX)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHVAULT_")}
    env.update(HEALTHVAULT_DATA_DIR=str(vault.settings.data_dir), HEALTHVAULT_PASSPHRASE=PASSPHRASE.decode())
    cmd = [sys.executable, "-m", "vault.cli", "keys", "rewrap", "--batch-size", "1"]
    proc = subprocess.Popen(cmd + ["--pause-ms", "200"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = vault.keystore.unfinished_rewrap_job()
            if job is not None and job.phase == "records" and job.scanned >= job.total // 2:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("the rewrap did not get halfway")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = vault.keystore.unfinished_rewrap_job()
    assert killed is not None and killed.status == "running"
    assert 0 < keystatus.compute_status(vault).deks_under_old_kek < 18
    finished = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert f"rewrap job {killed.id} done" in finished.stdout
    assert "rewrap" in finished.stderr and "key/s" in finished.stderr  # the progress bar (tqdm, with its rate/ETA)
    assert keystatus.compute_status(vault).deks_under_old_kek == 0
    _read_everything(client, people)
    from tests.helpers.drills import export_verifies  # the crash drill's last check: the chain verifies offline

    assert export_verifies(vault, vault.settings.data_dir / "exports" / "after-sigkill") > 0


def test_reads_keep_working_while_rewrap_runs(client, vault):
    people = _populate(client, vault, patients=2, per_patient=8)
    rotation.rotate_all_keks(vault, identity=OPERATOR, ctx=CTX)
    with vault.session() as session:
        accounts = {a.patient_id: a.id for a in session.scalars(select(Account).where(Account.patient_id.is_not(None)))}
    stop, errors, reads, during = threading.Event(), [], [], []
    running = threading.Event()

    def reader(person):
        identity = Identity(account_id=accounts[person["patient_id"]], role="patient",
                            patient_id=person["patient_id"])
        while not stop.is_set():
            for record_id, data in person["files"].items():
                try:
                    with vault.session() as session:
                        _view, chunks = records.open_content(session, vault, identity=identity, ctx=CTX,
                                                             record_id=record_id)
                        assert b"".join(chunks) == data
                    reads.append(record_id)
                    if running.is_set():
                        during.append(record_id)
                except Exception as exc:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=reader, args=(p,)) for p in people]
    for t in threads:
        t.start()
    try:
        running.set()
        job = rewrap.rewrap(vault, identity=OPERATOR, ctx=CTX, batch_size=1, pause_seconds=0.02)
        running.clear()
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert errors == []
    assert job.failed == 0 and job.rewrapped == 18
    assert len(during) >= 5, len(during)  # the readers really overlapped the rewrap
    assert keystatus.compute_status(vault).deks_under_old_kek == 0


def test_every_wrapped_dek_column_is_known_to_rewrap_and_retire():
    columns = {(t.name, c.name) for t in Base.metadata.tables.values() for c in t.columns if "wrapped" in c.name}
    assert columns == {(name, col.name) for name, _table, _id, _pid, col in key_common.DEK_COLUMNS}


# --- two-person root rotation over the API ----------------------------------------------------------------------------
def _problem(response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == f"urn:healthvault:problem:{slug}"
    return body


def test_two_person_root_rotation(client, vault):
    register(client, username="kr-patient")
    patient = login(client, "kr-patient")
    heads = {}
    for role, name in (("secadmin", "sec-a"), ("secadmin", "sec-b"), ("auditor", "aud"), ("auditadmin", "aadm"),
                       ("doctor", "doc"), ("sysadmin", "sys")):
        heads[name] = staff(client, vault, role, name)
        heads[name].pop("_secret")
    created = client.post("/v1/keys/rotations", headers=heads["sec-a"], json={"target": "root"})
    assert created.status_code == 201, created.text
    request = created.json()
    assert request["status"] == "pending" and request["new_version"] is None
    rid = request["request_id"]

    body = _problem(client.post(f"/v1/keys/rotations/{rid}/approve", headers=heads["sec-a"]), 403, "forbidden")
    assert body["reason"] == "two-person-rule" and "different security administrator" in body["detail"]
    assert vault.keys.current_root_version() == 1
    _problem(client.post("/v1/keys/rotations", headers=heads["sec-b"], json={}), 409, "conflict")

    for name in ("aud", "aadm"):  # compliance staff see everything and can do nothing
        status = client.get("/v1/keys/status", headers=heads[name])
        assert status.status_code == 200 and status.json()["pending_rotations"] == 1
        listed = client.get("/v1/keys/rotations", headers=heads[name]).json()["items"]
        assert [r["request_id"] for r in listed] == [rid]
        assert client.get(f"/v1/keys/rotations/{rid}", headers=heads[name]).json()["status"] == "pending"
        _problem(client.post("/v1/keys/rotations", headers=heads[name], json={}), 403, "forbidden")
        _problem(client.post(f"/v1/keys/rotations/{rid}/approve", headers=heads[name]), 403, "forbidden")
    for who in (heads["doc"], heads["sys"], patient):
        assert client.get("/v1/keys/status", headers=who).status_code == 403
        assert client.get("/v1/keys/rotations", headers=who).status_code == 403
        assert client.post(f"/v1/keys/rotations/{rid}/approve", headers=who).status_code == 403
    assert client.get("/v1/keys/status").status_code == 401
    assert client.post("/v1/keys/rotations/not-a-request/approve", headers=heads["sec-b"]).status_code == 404

    approved = client.post(f"/v1/keys/rotations/{rid}/approve", headers=heads["sec-b"])
    assert approved.status_code == 200, approved.text
    view = approved.json()
    assert view["status"] == "executed" and view["new_version"] == 2 and view["approved_by"] != view["requested_by"]
    assert vault.keys.current_root_version() == 2
    _problem(client.post(f"/v1/keys/rotations/{rid}/approve", headers=heads["sec-b"]), 409, "conflict")
    status = client.get("/v1/keys/status", headers=heads["aud"]).json()
    assert status["current_root_version"] == 2 and status["pending_rotations"] == 0
    assert status["keks_under_old_root"] == 1

    by_action = {(e.action, e.outcome, e.reason) for e in _events(vault) if e.action.startswith("key.")}
    assert {("key.request", "allow", "root"), ("key.approve", "deny", "two-person-rule"),
            ("key.approve", "allow", "two-person-rule"), ("key.rotate", "allow", f"request:{rid}"),
            ("key.status", "allow", "role"), ("key.request", "deny", "already-open")} <= by_action
    with vault.session() as session:
        ids = set(session.scalars(select(Account.id)))
    assert not ids & {e.actor for e in _events(vault)}  # actors are pseudonyms in the trail


def test_a_pending_request_expires_after_a_day(client, vault, clock):
    a = staff(client, vault, "secadmin", "sec-x")
    b = staff(client, vault, "secadmin", "sec-y")
    a.pop("_secret"), b.pop("_secret")
    rid = client.post("/v1/keys/rotations", headers=a, json={}).json()["request_id"]
    from kms.keystore_tables import RotationRequest

    with vault.keystore.session() as s, s.begin():  # a day and an hour ago (the tokens would not live that long)
        s.execute(update(RotationRequest).where(RotationRequest.id == rid)
                  .values(requested_at=clock() - dt.timedelta(hours=25)))
    body = _problem(client.post(f"/v1/keys/rotations/{rid}/approve", headers=b), 409, "conflict")
    assert body["request_status"] == "expired" and body["status"] == 409 and vault.keys.current_root_version() == 1
    assert client.post("/v1/keys/rotations", headers=b, json={}).status_code == 201  # a fresh request is possible


# --- the CLI ----------------------------------------------------------------------------------------------------------
def test_cli_root_rotation_follows_the_profile(vault):
    with pytest.raises(rotation.TwoPersonRuleRefused, match="two security administrators"):
        rotation.rotate_root_cli(vault, identity=OPERATOR, ctx=CTX, profile="production")
    assert vault.keys.current_root_version() == 1
    assert _events(vault, "key.rotate")[-1].outcome == "deny"
    # an approved request (its approval ran where the provider could not rotate) is executed by the CLI
    from kms.keystore_tables import RotationRequest

    vault.keystore.add_rotation_request(RotationRequest(
        id="5f0c1f4e-8a39-4e59-9c52-1d0b7f0f0c11", target="root", status="approved", requested_by="acct-a",
        requested_at=vault.clock(), approved_by="acct-b", approved_at=vault.clock()))
    view = rotation.rotate_root_cli(vault, identity=OPERATOR, ctx=CTX, profile="production")
    assert (view.request_id, view.status, view.new_version) == ("5f0c1f4e-8a39-4e59-9c52-1d0b7f0f0c11", "executed", 2)
    single = rotation.rotate_root_cli(vault, identity=OPERATOR, ctx=CTX, profile="development")
    assert single.new_version == 3 and single.approved_by is None
    assert "single-person (development profile)" in _events(vault, "key.rotate")[-1].reason


def test_cli_keys_commands(client, vault, backend, monkeypatch):
    if backend != "sqlite":
        pytest.skip("the CLI finds the data from the data directory alone on the embedded default")
    _local_only(vault)
    from click.testing import CliRunner

    from vault.cli import main

    people = _populate(client, vault, patients=2, per_patient=1)
    for key in [k for k in os.environ if k.startswith("HEALTHVAULT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HEALTHVAULT_DATA_DIR", str(vault.settings.data_dir))
    monkeypatch.setenv("HEALTHVAULT_PASSPHRASE", PASSPHRASE.decode())
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(main, ["keys", *args], catch_exceptions=False)
        return result.exit_code, result.output

    code, out = run("rotate")
    assert code == 2 and "exactly one of" in out
    code, out = run("rotate", "--root")
    assert code == 0 and "warning: development profile" in out and "version 2 is current" in out
    code, out = run("rotate", "--kek", people[0]["patient_id"])
    assert code == 0 and "patient KEK rotated: version 2" in out
    code, out = run("rotate", "--all-keks")
    assert code == 0 and "rotated the KEK of 2 patient(s)" in out
    code, out = run("status")
    assert code == 0 and "v1: wraps 2 patient KEK(s)" in out and "v2 (current)" in out
    assert "DEK(s) under an old KEK" in out
    code, out = run("status", "--json")
    assert json.loads(out)["deks_under_old_kek"] == 4
    code, out = run("retire", "--grace-seconds", "0")
    assert code == 0 and "kept: root version 1 still wraps" in out
    code, out = run("rewrap", "--batch-size", "2", "--retire", "--grace-seconds", "0")
    assert code == 0 and "rewrapped" in out and "retired root version(s): 1" in out, out
    code, out = run("status", "--json")
    status = json.loads(out)
    assert status["deks_under_old_kek"] == 0 and [r["version"] for r in status["root_versions"]] == [2]
    _read_everything(client, people)
    assert {"key.status", "key.rotate", "key.rewrap", "key.retire"} <= {e.action for e in _events(vault)}


# --- key events -------------------------------------------------------------------------------------------------------
def test_a_failed_unwrap_is_audited_with_a_pseudonym(client, vault):
    people = _populate(client, vault, patients=1, per_patient=1)
    person = people[0]
    record_id = next(iter(person["files"]))
    with vault.session() as session:
        blob = session.get(Record, record_id).wrapped_dek
        session.execute(update(Record).where(Record.id == record_id)
                        .values(wrapped_dek=blob[:-1] + bytes([blob[-1] ^ 1])))
        session.commit()
    response = client.get(f"/v1/records/{record_id}", headers=person["headers"])
    assert response.status_code == 500 and response.json()["type"] == "urn:healthvault:problem:integrity-failure"
    assert key_events.attach_auditor(vault).flush()
    failed = _events(vault, "key.unwrap_failed")
    assert len(failed) == 1
    event = failed[0]
    assert (event.outcome, event.actor_role, event.resource_type, event.reason) == ("error", "system", "dek",
                                                                                  "integrity")
    assert event.patient_pseudonym == audit_append.patient_pseudonym(vault, person["patient_id"])
    assert person["patient_id"] not in json.dumps([str(getattr(event, c)) for c in ("actor", "resource_id", "reason")])


def test_every_service_key_is_created_and_audited_when_the_vault_opens(client, vault):
    """No key is born unrecorded in the middle of another flow: the vault creates its service keys when it opens,
    one `key.create` event each, and a full round of use (registration, sign-in, records, grants, TOTP, a
    checkpoint) creates no other."""
    startup = [e for e in _events(vault, "key.create") if e.resource_type == "service-key"]
    purposes = [e.resource_id for e in startup]
    assert len(purposes) == len(set(purposes)) == len(key_events._service_purposes(vault))
    assert all((e.outcome, e.actor_role, e.reason) == ("allow", "system", "startup") for e in startup)
    _populate(client, vault, patients=2, per_patient=1)
    staff(client, vault, "doctor", "doc-keys")  # enrols TOTP
    audit_trail.checkpoint_now(vault, force=True)
    with vault.keystore.session() as session:
        stored = {row.purpose for row in session.scalars(select(ServiceKey))}
    assert stored == set(purposes)
    reopened = open_vault(vault.settings, PASSPHRASE, clock=vault.clock)
    try:
        assert key_events.ensure_service_keys(reopened) == []
    finally:
        reopened.close()
    assert len([e for e in _events(vault, "key.create") if e.resource_type == "service-key"]) == len(purposes)


def test_status_over_the_api_shows_versions_counts_and_the_rewrap_job(client, vault):
    _populate(client, vault, patients=2, per_patient=2)
    sec = staff(client, vault, "secadmin", "sec-s")
    sec.pop("_secret")
    rotation.rotate_all_keks(vault, identity=OPERATOR, ctx=CTX)
    status = client.get("/v1/keys/status", headers=sec).json()
    assert status["kek_versions"] == [{"version": 1, "keks": 2, "deks": 6}, {"version": 2, "keks": 2, "deks": 0}]
    assert status["deks_under_old_kek"] == 6 and status["rewrap_job"] is None
    assert status["root_versions"][0]["current"] and status["provider"] == vault.keys.provider_name
    rewrap.rewrap(vault, identity=OPERATOR, ctx=CTX, batch_size=4)
    status = client.get("/v1/keys/status", headers=sec).json()
    job = status["rewrap_job"]
    assert job["status"] == "done" and job["rewrapped"] == 6 and job["scanned"] == job["total"]
    assert status["deks_under_old_kek"] == 0


@pytest.mark.slow
def test_bench_rewrap_quick_runs_and_moves_every_key():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_rewrap.py"), "--quick"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                            env={k: v for k, v in os.environ.items() if not k.startswith("HEALTHVAULT_")})
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT_JSON: ")][-1]
    figures = json.loads(line.removeprefix("RESULT_JSON: "))
    assert figures["failed"] == 0 and figures["left_under_old_kek"] == 0
    assert figures["deks_per_s"] > 0 and figures["raw_keys_per_s"] > 0 and "ratio rewrap/raw" in result.stdout


def test_a_provider_that_cannot_rotate_leaves_no_stuck_request(tmp_path, backend, request, clock, monkeypatch):
    import base64

    from kms import KeyStoreError
    from tests.conftest import make_settings
    from vault.runtime import ROOT_KEY_ENV, init_data_dir

    # a real provider that cannot rotate: a vault run on the development root key given by environment variable
    monkeypatch.setenv(ROOT_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    settings = make_settings(tmp_path, backend, request, kms_provider="local")
    init_data_dir(settings, None)
    vault = open_vault(settings, None, clock=clock)
    try:
        with pytest.raises(KeyStoreError, match="cannot be rotated"):
            rotation.rotate_root_cli(vault, identity=OPERATOR, ctx=CTX, profile="development")
        assert [r.status for r in vault.keystore.rotation_requests()] == ["failed"]
        assert _events(vault, "key.rotate")[-1].outcome == "error"
    finally:
        vault.close()


def test_rotation_and_rewrap_on_an_sm_suite_vault(tmp_path, clock, monkeypatch):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from kms import SM4_GCM, WrappedKey, suites
    from tests.conftest import CHEAP_KDF, make_settings
    from vault.runtime import init_data_dir

    if not suites.is_supported(SM4_GCM):
        pytest.skip("SM4-GCM not available in this runtime")
    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    settings = make_settings(tmp_path, "sqlite", crypto_suite="sm")
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    vault = open_vault(settings, PASSPHRASE, clock=clock)
    try:
        with TestClient(create_app(vault), raise_server_exceptions=False) as client:
            people = _populate(client, vault, patients=2, per_patient=2, prefix="sm")
            assert all(WrappedKey(w).suite == SM4_GCM for w in _wrapped(vault).values())
            assert {r.suite for p in people for r in vault.keystore.patient_keks(p["patient_id"])} == {SM4_GCM}
            before = _snapshot(vault)
            rotation.rotate_root_cli(vault, identity=OPERATOR, ctx=CTX, profile="development")
            rotation.rotate_all_keks(vault, identity=OPERATOR, ctx=CTX)
            job = rewrap.rewrap(vault, identity=OPERATOR, ctx=CTX, batch_size=3)
            assert job.failed == 0 and keystatus.compute_status(vault).deks_under_old_kek == 0
            assert all(WrappedKey(w).suite == SM4_GCM and len(w) == 66 for w in _wrapped(vault).values())
            assert _snapshot(vault) == before
            assert retirement.retire(vault, identity=OPERATOR, ctx=CTX, grace_seconds=0).refused == []
            _read_everything(client, people)
    finally:
        vault.close()
