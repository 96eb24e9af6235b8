"""The background-job seam (vault/jobs/): handlers by kind, each kind on its own pool, progress objects by id."""

from __future__ import annotations

import threading

import pytest

from vault.jobs import Jobs, UnknownJob


def test_a_job_runs_its_kinds_handler_off_the_calling_thread():
    jobs = Jobs()
    seen: list[tuple[str, str]] = []
    jobs.register("lab.extract", lambda record_id: seen.append((record_id, threading.current_thread().name)) or 7)
    assert jobs.submit("lab.extract", "r-1").result(timeout=5) == 7
    record_id, thread = seen[0]
    assert record_id == "r-1" and thread.startswith("lab.extract") and thread != threading.current_thread().name
    jobs.shutdown()


def test_an_unregistered_kind_is_a_wiring_error_not_a_silent_drop():
    with pytest.raises(UnknownJob):
        Jobs().submit("nobody.handles.this", "x")


def test_each_kind_runs_at_most_its_workers_at_once():
    jobs = Jobs()
    running, peak, lock, release = [0], [0], threading.Lock(), threading.Event()

    def work(_: int) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(5)
        with lock:
            running[0] -= 1

    jobs.register("one-at-a-time", work, workers=1)
    futures = [jobs.submit("one-at-a-time", n) for n in range(3)]
    release.set()
    for future in futures:
        future.result(timeout=5)
    assert peak[0] == 1
    jobs.shutdown()


def test_progress_objects_are_found_by_kind_and_id_only():
    jobs = Jobs()
    progress = {"done": 3, "total": 10}
    jobs.track("audit.export", "e1", progress)
    assert jobs.tracked("audit.export", "e1") is progress
    assert jobs.tracked("audit.export", "e2") is None and jobs.tracked("other", "e1") is None
