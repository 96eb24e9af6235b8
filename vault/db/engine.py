"""Database engine, sessions and schema migrations for the data database.

Owns how the vault talks to SQLite or PostgreSQL: connection pragmas (WAL, secure_delete, foreign keys), the session
factory and running Alembic. It never holds key material: wrapped patient KEKs live in kms's separate key store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # RIP-1: deleted rows (wrapped keys, ciphertexts) are overwritten, not left in free pages.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Engine with the pragmas the vault relies on."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # pysqlite's default transaction handling is kept on purpose: reads run outside a transaction and a write
        # begins one just before its first INSERT, so a read-then-audit request never holds a stale WAL snapshot
        # that another writer's commit would turn into SQLITE_BUSY.
        engine = create_engine(url, connect_args={"check_same_thread": False}, pool_size=8, max_overflow=8,
                               hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # hide_parameters: bound values (ciphertexts, usernames) never appear in exception text or logs.
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True, hide_parameters=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine, *, keys: object | None = None, suite: int | None = None,
            keystore: object | None = None) -> list[str]:
    """Bring the data database to the newest schema. A revision that seals existing rows (0009) uses `keys` (the
    vault's KeyManager), `suite` and `keystore`; returns the service-key purposes such a revision created (for the
    caller to audit)."""
    cfg = alembic_config(engine)
    cfg.attributes.update(keys=keys, suite=suite, keystore=keystore)
    command.upgrade(cfg, "head")  # one head: a forked history fails here, loudly
    return list(cfg.attributes.get("service_keys_created", []))
