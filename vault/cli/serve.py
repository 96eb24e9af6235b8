"""`healthvault serve`: THE composition root of the HTTP service.

This is the one module of `vault/` allowed to import `api/` (tests/system/test_architecture.py checks it): it opens
the vault, builds the FastAPI app around it (`api.app.create_app`), starts the checkpointer and the log sink, and runs
uvicorn. Everything else in vault/ stays below the API and never imports it.
Owns the transport refusals (TLS on any non-loopback address, the production profile's serving checks, all reported
before the root key is opened), the start-up housekeeping after a crash (pending OCR extractions queued again, blobs
a killed upload committed without their row swept) and the start-up heap settling (`settle_heap`).
Never: serves without TLS on a non-loopback address, or logs request bodies, tokens or ids (uvicorn's access log is
off; the API's middleware logs route templates).
"""

from __future__ import annotations

import ipaddress

import click

from vault.cli import common_options, load_settings, open_or_fail
from vault.profile import ProductionRefused

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
def serve(data_dir: str | None, passphrase_file: str | None, host: str, port: int, tls_cert: str | None,
          tls_key: str | None) -> None:
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
    from vault import logsetup
    from vault.auditing.trail import Checkpointer
    from vault.labs import service as labs
    from vault.records import service as records

    vault = open_or_fail(data_dir, passphrase_file)
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
                    log_config=None, log_level="info", server_header=False)
    finally:
        checkpointer.stop()
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
