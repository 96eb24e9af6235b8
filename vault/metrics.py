"""Operational metrics in the Prometheus format (issue 17 item 5), across every server process of a machine.

Owns the metric definitions and the scrape: request rate and latency per route template, error counts per problem
type, OCR job durations, key-cache lookups (counted where they happen, in each process), and, read from the database
at scrape time so that every process and machine agrees, the OCR queue depth and the audit checkpoint lag (events not
yet under a signed checkpoint).

Never a label that identifies anyone: labels are route templates (`/v1/records/{record_id}`, never a concrete path),
HTTP methods and status codes, problem type slugs, job kinds and OCR statuses. No PHI, no ids, no user names.

Several processes: with $PROMETHEUS_MULTIPROC_DIR set before this module is first imported (`healthvault serve
--workers N` sets it), prometheus-client keeps each process's values in files there and the scrape sums them
(multiprocess mode); otherwise the process's own registry is served.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from vault.runtime import Vault

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REQUESTS = Counter("healthvault_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram("healthvault_http_request_duration_seconds", "HTTP request latency", ["route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0))
PROBLEMS = Counter("healthvault_problems_total", "Error responses by RFC 9457 problem type", ["type"])
JOB_SECONDS = Histogram("healthvault_job_duration_seconds", "Background job durations (OCR)", ["kind"],
                        buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0))
KEY_CACHE = Counter("healthvault_key_cache_lookups_total", "Key-cache lookups", ["result"])


def timed(kind: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    """`handler` with its duration observed under `kind` (a job kind, never an argument)."""
    histogram = JOB_SECONDS.labels(kind)

    def run(*args: Any) -> Any:
        started = time.perf_counter()
        try:
            return handler(*args)
        finally:
            histogram.observe(time.perf_counter() - started)

    return run


_KEY_HIT, _KEY_MISS = KEY_CACHE.labels("hit"), KEY_CACHE.labels("miss")


def observe_key_cache(hit: bool) -> None:
    (_KEY_HIT if hit else _KEY_MISS).inc()


class DatabaseGauges(Collector):
    """Gauges read from the shared database at scrape time (the same answer from every process)."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from sqlalchemy import func, select

        from audit import log
        from vault.db.models import Record

        with self.vault.session() as session:
            lag = log.pending_events(session)
            depth = dict(session.execute(select(Record.ocr_status, func.count()).where(
                Record.ocr_status.in_(("pending",))).group_by(Record.ocr_status)).all())
        queue = GaugeMetricFamily("healthvault_ocr_queue_depth", "Lab sheets waiting for extraction")
        queue.add_metric([], depth.get("pending", 0))
        yield queue
        pending = GaugeMetricFamily("healthvault_audit_checkpoint_lag_events",
                                    "Audit events not yet under a signed checkpoint")
        pending.add_metric([], lag)
        yield pending
        counts = getattr(self.vault.jobs, "counts", None)
        if counts is not None:
            jobs = GaugeMetricFamily("healthvault_queue_jobs", "Jobs in the PostgreSQL queue by status",
                                     labels=["status"])
            for status, n in sorted(counts().items()):
                jobs.add_metric([status], n)
            yield jobs


def scrape(vault: Vault) -> bytes:
    """The exposition text: this machine's process metrics (summed across processes in multiprocess mode) and the
    database gauges."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        for collector in (REQUESTS, LATENCY, PROBLEMS, JOB_SECONDS, KEY_CACHE):
            registry.register(collector)
    registry.register(DatabaseGauges(vault))
    return generate_latest(registry)

