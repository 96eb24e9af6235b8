"""8 concurrent writers (threads in this process and in two others) never fork or gap the chains."""

from __future__ import annotations

import multiprocessing
import threading
import uuid

import pytest
from sqlalchemy import func, select

from audit.models import AuditEvent
from tests.conftest import PASSPHRASE
from tests.helpers.chains import check_chains
from vault.access import audit_append
from vault.auditing import trail as audit_trail
from vault.identity import Identity, RequestContext


def _append_many(vault, count: int, tag: str) -> None:
    ctx = RequestContext(request_id=tag)
    for _ in range(count):
        identity = Identity(account_id=str(uuid.uuid4()), role="patient", patient_id=str(uuid.uuid4()))
        with vault.session() as session:
            audit_append.append(session, vault, identity=identity, ctx=ctx, action="record.read", outcome="allow",
                             resource_type="record", resource_id=str(uuid.uuid4()), patient_id=identity.patient_id)
            session.commit()


def _worker_process(settings, count: int, threads: int, tag: str) -> None:
    from vault.runtime import open_vault

    vault = open_vault(settings, PASSPHRASE, migrate=False)
    try:
        workers = [threading.Thread(target=_append_many, args=(vault, count, f"{tag}-{i}")) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        vault.close()


def _run(settings, vault, *, total: int) -> None:
    per_writer = total // 8
    with vault.session() as session:  # the vault's start-up events (its service keys' creation)
        before = session.scalar(select(func.count()).select_from(AuditEvent))
    spawn = multiprocessing.get_context("spawn")
    processes = [spawn.Process(target=_worker_process, args=(settings, per_writer, 2, f"proc{i}")) for i in range(2)]
    for p in processes:
        p.start()
    local = [threading.Thread(target=_append_many, args=(vault, per_writer, f"local{i}")) for i in range(4)]
    for t in local:
        t.start()
    # A checkpointer runs meanwhile, as in the server.
    checkpoints = []
    while any(t.is_alive() for t in local) or any(p.is_alive() for p in processes):
        made = audit_trail.checkpoint_now(vault)
        if made:
            checkpoints.append(made.tree_size)
        for t in local:
            t.join(timeout=0.2)
    for p in processes:
        p.join()
        assert p.exitcode == 0
    final = audit_trail.checkpoint_now(vault, force=True)
    with vault.session() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == before + per_writer * 8
        assert check_chains(session) == before + per_writer * 8
    assert final.tree_size == before + per_writer * 8
    assert checkpoints == sorted(checkpoints)


@pytest.mark.slow
@pytest.mark.postgres
def test_ten_thousand_events_from_eight_writers_on_postgres(tmp_path, request, monkeypatch):
    from tests.conftest import CHEAP_KDF, make_settings
    from vault.runtime import init_data_dir, open_vault

    monkeypatch.delenv("HEALTHVAULT_ROOT_KEY", raising=False)
    settings = make_settings(tmp_path, "postgres", request)
    init_data_dir(settings, PASSPHRASE, kdf_params=CHEAP_KDF)
    vault = open_vault(settings, PASSPHRASE)
    try:
        assert settings.effective_audit_chains == 16
        _run(settings, vault, total=10_000)
        out = tmp_path / "export"
        audit_trail.write_export(vault, since=None, until=None, out=out)
        from audit import verify

        report = verify.verify_bundle(out, audit_trail.signer(vault).vkey())
        assert report.ok, report.problems[:3]
    finally:
        vault.close()


def test_concurrent_writers_on_sqlite(settings, vault, backend):
    if backend != "sqlite":
        pytest.skip("the PostgreSQL variant above runs 10,000 events")
    _run(settings, vault, total=800)


def _append_for(vault, patient_id: str, count: int, tag: str) -> None:
    identity = Identity(account_id=str(uuid.uuid4()), role="patient", patient_id=patient_id)
    for _ in range(count):
        with vault.session() as session:
            audit_append.append(session, vault, identity=identity, ctx=RequestContext(request_id=tag),
                                action="record.read", outcome="allow", resource_type="record",
                                resource_id=str(uuid.uuid4()), patient_id=patient_id)
            session.commit()


def test_a_new_leaders_cold_log_copy_does_not_hold_up_appends(vault, backend, monkeypatch):
    """Building the Merkle-log copy of a new checkpoint leader (millions of leaves after a restart at scale: tens of
    seconds) happens before the checkpoint locks any chain head, so requests keep appending meanwhile."""
    if backend != "postgres":
        pytest.skip("on SQLite every writer waits for the database's one write lock: the row locks are PostgreSQL's")
    from audit import log

    patient = str(uuid.uuid4())
    _append_for(vault, patient, 20, "before")
    audit_trail.checkpoint_now(vault)
    _append_for(vault, patient, 3, "pending")  # the checkpoint below moves this chain's watermark
    vault.log_cache.reset()  # a process that has just taken the lead: its copy is empty
    real_sync = log.LogCache.sync
    during: list[bool] = []

    def sync_with_a_request_meanwhile(cache, session, size=None, alg=None):
        if cache.tree.size == 0:  # the cold build: a request of the same patient appends on its own connection
            writer = threading.Thread(target=_append_for, args=(vault, patient, 1, "during"))
            writer.start()
            writer.join(timeout=10)
            during.append(not writer.is_alive())
        return real_sync(cache, session, size, alg)

    monkeypatch.setattr(log.LogCache, "sync", sync_with_a_request_meanwhile)
    made = audit_trail.checkpoint_now(vault)
    assert during == [True], "the append waited for the checkpoint's transaction"
    final = audit_trail.checkpoint_now(vault, force=True)
    with vault.session() as session:
        assert check_chains(session) == final.tree_size >= made.tree_size
