"""`healthvault worker`: run the background jobs (OCR of lab sheets) from the PostgreSQL queue.

Owns starting a queue worker process on any machine that reaches the database and the blob store (issue 17 item 2).
It opens the vault like the server does (same settings, root key and key store), refuses to start unless the job
queue is Procrastinate (`HEALTHVAULT_JOB_QUEUE=procrastinate`, PostgreSQL only), and stops on SIGINT/SIGTERM after
the jobs it is running have finished. Jobs of a worker that dies (SIGKILL, lost machine) are put back in the queue by
the other workers (vault/jobs/queue.py). It takes no secret as an argument.
"""

from __future__ import annotations

import os
import socket

import click

from vault.cli import common_options, open_or_fail


@click.command("worker")
@common_options
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Jobs run at once by this process (each OCR job takes about one core).")
def worker(data_dir, passphrase_file, concurrency) -> None:
    """Run background jobs (OCR) from the PostgreSQL queue until stopped."""
    from vault.cli import logsetup
    from vault.db import keystate
    from vault.jobs.queue import QueueJobs

    vault = open_or_fail(data_dir, passphrase_file)
    if not isinstance(vault.jobs, QueueJobs):
        vault.close()
        raise click.ClickException("no job queue to work on: set HEALTHVAULT_JOB_QUEUE=procrastinate "
                                   "(PostgreSQL only); the embedded default runs jobs inside `healthvault serve`")
    log_listener = logsetup.configure(vault.settings)
    watcher = keystate.watch(vault)  # an erasure elsewhere drops this process's cached keys too
    name = f"{socket.gethostname()}-{os.getpid()}"
    click.echo(f"worker {name} running {concurrency} job(s) at a time")
    try:
        vault.jobs.run_worker(concurrency=concurrency, name=name)
    finally:
        watcher.stop()
        vault.close()
        log_listener.stop()
