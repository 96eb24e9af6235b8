"""`healthvault serve --workers N`: N API processes on one socket, for PostgreSQL deployments (issue 17 item 3).

Owns starting uvicorn's process supervisor with an app factory that each server process calls: it opens the vault
(the parent has already migrated and checked the key), starts the audit checkpointer (only the holder of the
database's leader lock signs: vault/db/leader.py) and the key-state watcher (vault/keystate.py), and builds the app.
The processes share nothing but PostgreSQL and the blob store: revocation, logout, lockouts and erasure are decided
from the database on every request. SQLite is refused (one writer; the embedded default is one process).

The root-key passphrase reaches the server processes through their environment ($HEALTHVAULT_PASSPHRASE, readable
only by the same user), never through arguments; with a PKCS#11 root key each process reads the PIN as usual.
"""

from __future__ import annotations

import atexit
import os
import shutil
from typing import TYPE_CHECKING

import click

from vault.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

FACTORY = "vault.cli.multiserve:app_factory"
PASSPHRASE_ENV = "HEALTHVAULT_PASSPHRASE"  # noqa: S105 - the name of a variable, not a secret


def serve_workers(*, settings: Settings, passphrase: bytes | None, host: str, port: int, tls_cert: str | None,
                  tls_key: str | None, workers: int) -> None:
    """Run `workers` server processes until stopped (SIGINT/SIGTERM stop them all)."""
    import uvicorn

    if settings.is_sqlite:
        raise click.UsageError("--workers needs PostgreSQL (HEALTHVAULT_DATABASE_URL): SQLite has one writer")
    os.environ["HEALTHVAULT_DATA_DIR"] = str(settings.data_dir)
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # /metrics sums the processes' values kept here
        metrics_dir = settings.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)  # values of a previous run would be summed in
        metrics_dir.mkdir(mode=0o700)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    if passphrase is not None:
        os.environ[PASSPHRASE_ENV] = passphrase.decode()
    click.echo(f"serving on {'https' if tls_cert else 'http'}://{host}:{port} with {workers} processes")
    uvicorn.run(FACTORY, factory=True, workers=workers, host=host, port=port, ssl_certfile=tls_cert,
                ssl_keyfile=tls_key, access_log=False, log_config=None, log_level="info", server_header=False)


def app_factory() -> FastAPI:
    """One server process: the vault, its checkpointer and key-state watcher, the app."""
    from api.app import create_app
    from vault import keystate, logsetup
    from vault.auditing.trail import Checkpointer
    from vault.cli import settle_heap
    from vault.runtime import open_vault

    settings = Settings.load(os.environ.get("HEALTHVAULT_DATA_DIR"))
    passphrase = os.environ.get(PASSPHRASE_ENV)
    vault = open_vault(settings, passphrase.encode() if passphrase else None, migrate=False)
    log_listener = logsetup.configure(vault.settings)
    checkpointer = Checkpointer(vault)
    checkpointer.start()
    watcher = keystate.watch(vault)
    app = create_app(vault)

    def stop() -> None:
        watcher.stop()
        checkpointer.stop()
        vault.close()
        log_listener.stop()

    atexit.register(stop)
    settle_heap()
    return app
