"""`healthvault doctor`: what this deployment still lacks for MLPS level 3 and 密评 (exit 1 if anything is lacking).

Needs no passphrase or PIN: it reads the settings and, when it exists, the data database (never a key).
Never: opens the root key, changes anything, or prints a secret (checks report what is missing, not values).
"""

from __future__ import annotations

import datetime as dt
import json
import sys

import click

from vault.cli import load_settings


@click.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Data directory (default: $HEALTHVAULT_DATA_DIR, else ./var).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
def doctor(data_dir: str | None, as_json: bool) -> None:
    """Print what this deployment still lacks for MLPS level 3 and 密评 (exit 1 if anything is lacking).

    Needs no passphrase or PIN: it reads the settings and, when it exists, the data database (never a key).
    """
    from vault import profile
    from vault.db import engine as db

    settings = load_settings(data_dir)
    engine = None
    factory = None
    if settings.is_sqlite and not (settings.data_dir / "vault.db").exists():
        pass  # not initialised yet: settings checks only
    else:
        engine = db.make_engine(settings.database_url)
        factory = db.make_sessionmaker(engine)
    try:
        try:
            checks = profile.run_all(settings, session_factory=factory, now=dt.datetime.now(dt.UTC))
        except Exception as exc:  # noqa: BLE001 (an unreachable or uninitialised database is itself a finding)
            checks = profile.run_all(settings) + [profile.Check(
                id="database-reachable", rows="BAK-1", scope="mlps", ok=False,
                message=f"the data database could not be read ({type(exc).__name__}): run `healthvault init`")]
    finally:
        if engine is not None:
            engine.dispose()
    lacking = [c for c in checks if not c.ok]
    if as_json:
        click.echo(json.dumps({"profile": settings.profile, "kms_provider": settings.kms_provider,
                               "crypto_suite": settings.crypto_suite, "lacking": len(lacking),
                               "checks": [c.as_dict() for c in checks]}, ensure_ascii=False, indent=2))
    else:
        click.echo(f"healthvault doctor: profile={settings.profile} kms_provider={settings.kms_provider} "
                   f"crypto_suite={settings.crypto_suite}")
        for c in checks:
            mark = "ok    " if c.ok else ("REFUSE" if c.refuse and settings.profile == "production" else "LACKS ")
            click.echo(f"  [{mark}] {c.rows:<8} {c.scope:<9} {c.message}")
        mlps = sum(1 for c in lacking if "mlps" in c.scope)
        miping = sum(1 for c in lacking if "密评" in c.scope)
        click.echo(f"{len(lacking)} lacking: {mlps} for MLPS level 3, {miping} for 密评 (GB/T 39786)")
    sys.exit(1 if lacking else 0)
