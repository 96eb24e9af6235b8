"""`healthvault serve`: THE composition root of the HTTP service.

This is the one module of `vault/` allowed to import `api/` (tests/system/test_architecture.py checks it): it opens
the vault, builds the FastAPI app around it (`api.app.create_app`), starts the checkpointer and the log sink, and runs
uvicorn. Everything else in vault/ stays below the API and never imports it.
Owns the transport refusals (TLS on any non-loopback address, the production profile's serving checks, all reported
before the root key is opened), the start-up housekeeping after a crash (pending OCR extractions queued again, blobs a
killed upload committed without their row swept), the start-up heap settling (`settle_heap`) and, with `--workers N`
on PostgreSQL, uvicorn's process supervisor with an app factory each server process calls (`app_factory`: its own
vault, the audit checkpointer — only the holder of the database's leader lock signs, vault/db/leader.py — and the
key-state watcher, vault/db/keystate.py). The processes share nothing but PostgreSQL and the blob store: revocation,
logout, lockouts and erasure are decided from the database on every request. The root-key passphrase reaches the
server processes through their environment ($HEALTHVAULT_PASSPHRASE, readable only by the same user), never through
arguments.
Never: serves without TLS on a non-loopback address, or logs request bodies, tokens or ids (uvicorn's access log is
off; the API's middleware logs route templates).
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
from typing import TYPE_CHECKING, TypedDict

import click

from vault.cli import common_options, load_settings, open_or_fail, read_passphrase
from vault.profile import ProductionRefused
from vault.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

# The young generation is collected after this many net container allocations instead of CPython's 700.
GC_GEN0_THRESHOLD = 10_000


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@common_options
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True))
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes on one socket (PostgreSQL only).")
def serve(data_dir: str | None, passphrase_file: str | None, host: str, port: int, tls_cert: str | None,
          tls_key: str | None, workers: int) -> None:
    """Run the HTTP API (TLS is required on any non-loopback address)."""
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if not tls_cert and not _is_loopback(host):
        raise click.UsageError(f"refusing to serve on {host} without TLS: pass --tls-cert and --tls-key")
    from vault import profile

    settings = load_settings(data_dir)
    try:  # every refusal at once, before the key is opened: settings and transport
        profile.refuse_unless_ready(profile.settings_checks(settings)
                                    + profile.serving_checks(settings, host=host, tls=bool(tls_cert)), settings)
    except ProductionRefused as exc:
        raise click.ClickException(str(exc)) from exc
    import uvicorn

    from api.app import create_app
    from vault.auditing.trail import Checkpointer
    from vault.cli import logsetup
    from vault.db import keystate
    from vault.labs import service as labs
    from vault.records import service as records

    vault = open_or_fail(data_dir, passphrase_file)
    if workers > 1:  # the key opened and the schema migrated once, here; then one vault per server process
        vault.close()
        return serve_workers(settings=settings, passphrase=read_passphrase(passphrase_file), host=host, port=port,
                             tls_cert=tls_cert, tls_key=tls_key, workers=workers)
    watcher = keystate.watch(vault)  # several `serve` processes on one database drop erased keys together
    log_listener = logsetup.configure(vault.settings)
    labs.resume_pending(vault)  # extractions a killed server left pending (the crash drills)
    records.sweep_orphan_blobs(vault)  # blobs a killed upload committed without their row
    app = create_app(vault)
    checkpointer = Checkpointer(vault)
    checkpointer.start()
    settle_heap()
    click.echo(f"serving on {'https' if tls_cert else 'http'}://{host}:{port}")
    try:
        uvicorn.run(app, host=host, port=port, ssl_certfile=tls_cert, ssl_keyfile=tls_key, access_log=False,
                    log_config=None, log_level="info", server_header=False, **proxy_options(settings))
    finally:
        checkpointer.stop()
        watcher.stop()
        vault.close()
        log_listener.stop()


def settle_heap() -> None:
    """Keep the cyclic garbage collector off the start-up heap and out of most requests.

    What start-up allocated (FastAPI, SQLAlchemy, pydantic, Casbin, the OCR models) lives as long as the process, yet
    every older-generation collection walked all of it again: under bench/bench_http.py's load a full collection took
    ~160 ms with every thread stopped, and collections took ~7 % of the server's time. `gc.freeze()` moves the
    start-up heap out of the collector's sight; the higher gen-0 threshold lets a request's short-lived containers die
    by reference count before a collection looks at them. Together: ~25 % more record reads/s and a p99 about half as
    long (docs/performance.md). Reference cycles are still collected."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


FACTORY = "vault.cli.serve:app_factory"
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
                ssl_keyfile=tls_key, access_log=False, log_config=None, log_level="info", server_header=False,
                **proxy_options(settings))


class ProxyOptions(TypedDict):
    proxy_headers: bool
    forwarded_allow_ips: str


def proxy_options(settings: Settings) -> ProxyOptions:
    """uvicorn's forwarded-header handling from `trusted_proxies`: off unless proxies are named (uvicorn's own default
    believes X-Forwarded-For from 127.0.0.1, which would let any local process pick the address that the rate limits,
    the audit trail and the admin-network check see)."""
    trusted = (settings.trusted_proxies or "").strip()
    if not trusted:
        return ProxyOptions(proxy_headers=False, forwarded_allow_ips="")
    return ProxyOptions(proxy_headers=True, forwarded_allow_ips=trusted)


def app_factory() -> FastAPI:
    """One server process: the vault, its checkpointer and key-state watcher, the app."""
    from api.app import create_app
    from vault.auditing.trail import Checkpointer
    from vault.cli import logsetup
    from vault.db import keystate
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
