"""OCR jobs on a real queue (issue 17 item 2): Procrastinate on the real PostgreSQL, `healthvault worker` processes.

A job is queued in the same transaction as its record row; a failing job is retried with backoff; the jobs of a worker
killed mid-job are put back in the queue and finished by the other worker; every sheet ends extracted, each result
stored once.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from tests.conftest import CHEAP_KDF, PASSPHRASE, make_settings, require_pg
from tests.helpers import login, register, upload
from vault.db.models import Record
from vault.jobs.queue import QueueJobs
from vault.records.service import EXTRACT_JOB
from vault.runtime import init_data_dir, open_vault

sheetgen = pytest.importorskip("tests.ocr.sheetgen")
pytestmark = pytest.mark.postgres

HEARTBEAT = 1.0
STALLED = 4.0


@pytest.fixture
def queue_settings(tmp_path, request, monkeypatch):
    require_pg()
    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    settings = make_settings(tmp_path, "postgres", request, job_queue="procrastinate",
                             job_heartbeat_seconds=HEARTBEAT, job_stalled_seconds=STALLED)
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    return settings


@pytest.fixture
def queue_vault(queue_settings):
    vault = open_vault(queue_settings, PASSPHRASE)
    yield vault
    vault.close()


def _jobs(vault, task: str = EXTRACT_JOB) -> list[dict]:
    with vault.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, status::text AS status, args, attempts, scheduled_at, worker_id "
                                 "FROM procrastinate_jobs WHERE task_name = :task ORDER BY id"), {"task": task})
        return [dict(r._mapping) for r in rows]


def test_a_job_is_queued_in_the_transaction_of_its_record(queue_vault):
    assert isinstance(queue_vault.jobs, QueueJobs)
    with queue_vault.session() as session:
        queue_vault.jobs.enqueue(session, EXTRACT_JOB, "00000000-0000-0000-0000-000000000001")
        session.rollback()
    assert _jobs(queue_vault) == []  # rolled back with the transaction: never visible
    with TestClient(__import__("api.app", fromlist=["create_app"]).create_app(queue_vault)) as client:
        register(client, username="queued")
        headers = login(client, "queued")
        created = upload(client, headers, sheetgen.digital_pdf().data, category="lab_report",
                         content_type="application/pdf")
        assert created.status_code == 201 and created.json()["ocr_status"] == "pending"
        record_id = created.json()["record_id"]
        jobs = _jobs(queue_vault)
        assert [(j["status"], j["args"]) for j in jobs] == [("todo", {"args": [record_id]})]  # ids only, no PHI
        queue_vault.jobs.run_worker(wait=False, install_signal_handlers=False)  # drains the queue, returns
        body = client.get(f"/v1/records/{record_id}", headers=headers).json()
        assert body["ocr_status"] in ("done", "needs_review"), body.get("ocr_error")
        assert _jobs(queue_vault) == []  # succeeded jobs are removed
        # Running the job again (a retry, a stalled worker's job) changes nothing.
        assert queue_vault.jobs._handlers[EXTRACT_JOB][0](record_id) == body["ocr_status"]
        assert client.get(f"/v1/records/{record_id}", headers=headers).json() == body


def test_a_failing_job_is_retried_with_backoff(queue_vault):
    calls = []

    def flaky(arg: str) -> str:
        calls.append(arg)
        if len(calls) == 1:
            raise ConnectionError("the blob store did not answer")
        return "ok"

    queue_vault.jobs.register("test.flaky", flaky)
    queue_vault.jobs.submit("test.flaky", "x")
    before = dt.datetime.now(dt.UTC)
    queue_vault.jobs.run_worker(wait=False, install_signal_handlers=False)
    [job] = _jobs(queue_vault, "test.flaky")
    assert calls == ["x"] and job["status"] == "todo" and job["attempts"] == 1
    assert job["scheduled_at"] > before + dt.timedelta(seconds=1)  # backoff: not retried at once
    with queue_vault.engine.begin() as conn:  # fast-forward the backoff
        conn.execute(text("UPDATE procrastinate_jobs SET scheduled_at = now() WHERE id = :id"), {"id": job["id"]})
    queue_vault.jobs.run_worker(wait=False, install_signal_handlers=False)
    assert calls == ["x", "x"] and _jobs(queue_vault, "test.flaky") == []


def test_the_worker_command_refuses_without_a_queue(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from vault.cli import main

    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    settings = make_settings(tmp_path, "sqlite")
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    result = CliRunner().invoke(main, ["worker", "--data-dir", str(settings.data_dir)],
                                env={"HEALTHVAULT_PASSPHRASE": PASSPHRASE.decode()})
    assert result.exit_code == 1 and "HEALTHVAULT_JOB_QUEUE=procrastinate" in result.output
    with pytest.raises(ValueError, match="needs PostgreSQL"):
        make_settings(tmp_path, "sqlite", job_queue="procrastinate")


def _worker_env(settings) -> dict:
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "HEALTHVAULT_PASSPHRASE": PASSPHRASE.decode(),
           "HEALTHVAULT_DATA_DIR": str(settings.data_dir), "HEALTHVAULT_DATABASE_URL": settings.database_url,
           "HEALTHVAULT_KEYSTORE_URL": settings.keystore_url, "HEALTHVAULT_KEYSTORE_SCHEMA": settings.keystore_schema,
           "HEALTHVAULT_JOB_QUEUE": "procrastinate", "HEALTHVAULT_JOB_HEARTBEAT_SECONDS": str(HEARTBEAT),
           "HEALTHVAULT_JOB_STALLED_SECONDS": str(STALLED)}
    env.pop("HEALTHVAULT_ROOT_KEY", None)
    if settings.blob_url:
        env["HEALTHVAULT_BLOB_URL"] = settings.blob_url
    return env


def _start_worker(settings, log_path) -> subprocess.Popen:
    log = open(log_path, "wb")
    return subprocess.Popen([sys.executable, "-m", "vault.cli", "worker", "--concurrency", "1"],
                            env=_worker_env(settings), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def _until(condition, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for proc in procs:
            assert proc.poll() is None, f"a worker exited early ({proc.returncode}) while waiting for {what}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _scalar(vault, sql: str, **params):
    with vault.engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


@pytest.mark.slow
def test_two_workers_one_killed_mid_job_every_sheet_extracted_once(queue_vault, queue_settings, tmp_path):
    vault = queue_vault
    # Each stored result is counted by the database itself: a row per write of lab results.
    with vault.engine.begin() as conn:
        conn.execute(text("CREATE TABLE result_writes (record_id varchar(36) NOT NULL)"))
        conn.execute(text("""CREATE FUNCTION count_result_write() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO result_writes VALUES (NEW.id); RETURN NEW; END $$"""))
        conn.execute(text("""CREATE TRIGGER records_result_write AFTER UPDATE OF lab_results_enc ON records
            FOR EACH ROW WHEN (NEW.lab_results_enc IS NOT NULL) EXECUTE FUNCTION count_result_write()"""))
    # 20 sheets: the first four are scanned (OCR, ~1-2 s each: a job certainly in progress when the kill comes),
    # the rest born digital (text layer, fast) so the test stays about a minute.
    scanned = sheetgen.scanned_pdf(sheetgen.image_sheet(width=900))
    digital = sheetgen.digital_pdf().data
    with TestClient(__import__("api.app", fromlist=["create_app"]).create_app(vault)) as client:
        register(client, username="many-sheets")
        headers = login(client, "many-sheets")
        record_ids = []
        for i in range(20):
            created = upload(client, headers, scanned if i < 4 else digital, category="lab_report",
                             content_type="application/pdf")
            assert created.status_code == 201, created.text
            record_ids.append(created.json()["record_id"])
    assert len(_jobs(vault)) == 20

    first = _start_worker(queue_settings, tmp_path / "worker-a.log")
    second = None
    try:
        victim_id = _until(lambda: _scalar(vault, "SELECT min(id) FROM procrastinate_workers"), 60,
                           "the first worker to register", [first])
        second = _start_worker(queue_settings, tmp_path / "worker-b.log")
        _until(lambda: _scalar(vault, "SELECT count(*) FROM procrastinate_workers") >= 2, 60,
               "the second worker to register", [first, second])
        job_id = _until(lambda: _scalar(vault, "SELECT id FROM procrastinate_jobs WHERE status = 'doing' "
                                               "AND worker_id = :w AND task_name = :t", w=victim_id, t=EXTRACT_JOB),
                        90, "the first worker to run a job", [first, second])
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        # Killed mid-job: the job is still marked as running, by a worker that will never finish it.
        assert _scalar(vault, "SELECT status::text FROM procrastinate_jobs WHERE id = :id", id=job_id) == "doing"

        def all_extracted():
            with vault.session() as session:
                statuses = list(session.scalars(select(Record.ocr_status).where(Record.id.in_(record_ids))))
            return all(s not in ("pending", None) for s in statuses)

        _until(all_extracted, 180, "every sheet to be extracted", [second])
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    with vault.session() as session:
        rows = list(session.execute(select(Record.id, Record.ocr_status, Record.ocr_error)
                                    .where(Record.id.in_(record_ids))))
    assert all(status in ("done", "needs_review") for _id, status, _error in rows), rows
    writes = dict.fromkeys(record_ids, 0)
    with vault.engine.connect() as conn:
        for (record_id,) in conn.execute(text("SELECT record_id FROM result_writes")):
            writes[record_id] += 1
    assert set(writes.values()) == {1}, writes  # every result stored, none twice
    assert [j for j in _jobs(vault) if j["status"] != "succeeded"] == []  # nothing left queued, running or failed


def test_the_app_role_queues_runs_and_invalidates_without_ddl(pg_app_role_settings):
    """Migrations (and the queue's schema) are the owner's; the service role only uses them (issue 17 item 4)."""
    import dataclasses

    from sqlalchemy.exc import DBAPIError

    from vault.db import keystate
    from vault.db.leader import CHECKPOINTER, LeaderLock

    _owner, app_settings = pg_app_role_settings
    app_settings = dataclasses.replace(app_settings, job_queue="procrastinate")
    vault = open_vault(app_settings, PASSPHRASE)
    try:
        calls = []
        vault.jobs.register("test.role", calls.append)
        with vault.session() as session:
            vault.jobs.enqueue(session, "test.role", "r1")
            keystate.publish(session, patient_id=None, reason="retire", now=vault.clock())
            session.commit()
        vault.jobs.run_worker(wait=False, install_signal_handlers=False)
        assert calls == ["r1"]
        watcher = keystate.KeyStateWatcher(vault)
        with vault.session() as session:
            keystate.publish(session, patient_id=None, reason="retire", now=vault.clock())
            session.commit()
        assert watcher.apply() == 1
        leader = LeaderLock(vault.engine, CHECKPOINTER, duty="test")
        assert leader.held()
        leader.release()
        for statement in ("DROP TABLE procrastinate_jobs", "ALTER TABLE procrastinate_jobs ADD COLUMN x int",
                          "DELETE FROM key_invalidations", "CREATE TABLE t_evil (x int)"):
            with pytest.raises(DBAPIError, match=r"permission denied|must be owner"):
                with vault.engine.begin() as conn:
                    conn.exec_driver_sql(statement)
    finally:
        vault.close()
