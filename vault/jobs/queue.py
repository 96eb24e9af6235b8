"""Background jobs on a real queue: Procrastinate on the PostgreSQL the deployment already has (issue 17 item 2).

Owns the `vault.jobs` interface when `job_queue = procrastinate`: `enqueue(session, kind, *ids)` inserts the job with
Procrastinate's own SQL on the caller's database connection, inside the caller's transaction, so a job exists if and
only if the row it is about was committed; `submit(kind, *ids)` queues outside any transaction; `run_worker` runs the
jobs on any machine that reaches the database and the blob store (`healthvault worker`).

Failure handling, all by Procrastinate: a handler that raises is retried with exponential backoff (`RETRY`); a worker
that stops heart-beating (killed, machine lost) has its running jobs put back in the queue by the `recover_stalled`
periodic task (`get_stalled_jobs` + `retry_job`, the recipe of Procrastinate's documentation), which every worker
runs and Procrastinate defers once per period across all of them. A job may therefore run twice: handlers must be
idempotent (`vault.labs.service.run_extraction` is: it acts only on a record still `pending` and stores its result
with a conditional UPDATE).

Job arguments are ids only, never PHI (they are stored in plain in `procrastinate_jobs`). The queue's schema is
created by the data migrations (0007), as the owner role; the service and the workers only use it.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from vault.jobs import Handler, Jobs, UnknownJob

if TYPE_CHECKING:
    import procrastinate

log = logging.getLogger("healthvault.jobs")
QUEUE = "healthvault"
MAX_ATTEMPTS = 6  # the first run and five retries: 2, 4, 8, 16, 32 seconds later
RECOVER_TASK = "healthvault.recover_stalled"


def libpq_url(database_url: str) -> str:
    """The libpq connection string of a SQLAlchemy PostgreSQL URL (same host, user, database and options)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError("the job queue needs PostgreSQL (job_queue = procrastinate)")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def schema_sql() -> str:
    """Procrastinate's schema (tables, types, functions), as the migration applies it."""
    from procrastinate.schema import SchemaManager

    return SchemaManager.get_schema()


class QueueJobs(Jobs):
    """`vault.jobs.Jobs` on Procrastinate: same register/enqueue/submit; `run_worker` executes."""

    def __init__(self, database_url: str, *, heartbeat_seconds: float = 10.0,
                 stalled_seconds: float = 30.0) -> None:
        super().__init__()
        import procrastinate

        self.heartbeat_seconds = heartbeat_seconds
        self.stalled_seconds = stalled_seconds
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(
            conninfo=libpq_url(database_url), min_size=1, max_size=4))
        self._retry = procrastinate.RetryStrategy(max_attempts=MAX_ATTEMPTS, exponential_wait=2)
        self._tasks: dict[str, procrastinate.tasks.Task] = {}
        self._sync_open = False
        self._register_recovery()

    def _register_recovery(self) -> None:
        every = max(1, int(self.stalled_seconds // 2))
        stalled = self.stalled_seconds

        # croniter's optional sixth field is seconds: every `every` seconds, once across all workers.
        @self.app.periodic(cron=f"* * * * * */{every}", periodic_id="recover")
        @self.app.task(name=RECOVER_TASK, queue=QUEUE, queueing_lock=RECOVER_TASK, pass_context=True)
        async def recover_stalled(context: Any, timestamp: int) -> int:
            manager = context.app.job_manager
            count = 0
            for job in await manager.get_stalled_jobs(seconds_since_heartbeat=stalled):
                try:
                    await manager.retry_job(job)
                    count += 1
                except Exception as exc:  # noqa: BLE001 - another worker retried it first: nothing to do
                    log.info("stalled job %s not retried: %s", job.id, type(exc).__name__)
            if count:
                log.warning("put %d job(s) of stalled workers back in the queue", count)
            return count

    def register(self, kind: str, handler: Handler, *, workers: int = 1) -> None:
        super().register(kind, handler, workers=workers)

        def run(args: list) -> Any:
            return handler(*args)

        run.__name__ = run.__qualname__ = kind.replace(".", "_")
        self._tasks[kind] = self.app.task(name=kind, queue=QUEUE, retry=self._retry)(run)

    def _task(self, kind: str) -> procrastinate.tasks.Task:
        try:
            return self._tasks[kind]
        except KeyError:
            raise UnknownJob(kind) from None

    def enqueue(self, session: Session, kind: str, *args: Any) -> None:
        """Insert the job in `session`'s transaction (on its own database connection): committed with it or never."""
        task = self._task(kind)
        connection = session.connection().connection.dbapi_connection
        task.configure(connection=connection).defer(args=list(args))

    def submit(self, kind: str, *args: Any) -> Any:
        """Queue a job on a connection of the queue's own (outside any caller transaction); returns its job id."""
        task = self._task(kind)
        if not self._sync_open:
            self.app.open()
            self._sync_open = True
        return task.defer(args=list(args))

    def run_worker(self, *, concurrency: int = 1, wait: bool = True, name: str | None = None,
                   install_signal_handlers: bool = True) -> None:
        """Run jobs until stopped (SIGINT/SIGTERM: running jobs finish first), or, without `wait`, until the queue is
        empty. Blocking handlers run on `concurrency` threads."""
        self.app.run_worker(queues=[QUEUE], concurrency=concurrency, wait=wait, name=name,
                            update_heartbeat_interval=self.heartbeat_seconds,
                            stalled_worker_timeout=self.stalled_seconds, delete_jobs="successful",
                            install_signal_handlers=install_signal_handlers, fetch_job_polling_interval=1.0)

    def counts(self) -> dict[str, int]:
        """Jobs per status (todo, doing, failed, ...) of this vault's queue: for /metrics and tests."""
        if not self._sync_open:
            self.app.open()
            self._sync_open = True
        rows = self.app.connector.get_sync_connector().execute_query_all(
            query="SELECT status::text AS status, count(*) AS n FROM procrastinate_jobs "
                  "WHERE queue_name = %(queue)s GROUP BY status", queue=QUEUE)
        return {row["status"]: int(row["n"]) for row in rows}

    def shutdown(self) -> None:
        super().shutdown()
        if self._sync_open:
            self.app.close()
            self._sync_open = False


def stalled_cutoff(stalled_seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=stalled_seconds)
