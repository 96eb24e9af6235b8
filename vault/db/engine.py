"""Database engine, sessions and schema migrations for the data database.

Owns how the vault talks to SQLite or PostgreSQL: connection pragmas (WAL, secure_delete, foreign keys), the session
factory and running Alembic. It never holds key material: wrapped patient KEKs live in kms's separate key store.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from audit.statements import driver_error

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Set in a connection's `info` when a SAVEPOINT, RELEASE or ROLLBACK TO failed on it: the transaction's savepoint stack
# is then not what SQLAlchemy believes (vault/group_commit.py refuses to commit such a transaction).
SAVEPOINT_FAILED = "vault.db.savepoint_failed"
# Set in a connection's `info` by a caller whose savepoints must all nest in the transaction it holds open
# (vault/group_commit.py). On SQLite a SAVEPOINT outside any transaction begins one, and its RELEASE then commits on its
# own: after SQLite ended the shared transaction by itself, a unit's writes would be committed behind the batch's 503.
# Such a SAVEPOINT is refused (and marks the connection, as a failed one does).
SAVEPOINT_NEEDS_TRANSACTION = "vault.db.savepoint_needs_transaction"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # RIP-1: deleted rows (wrapped keys, ciphertexts) are overwritten, not left in free pages.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _driver_savepoints(dialect) -> None:
    """SAVEPOINT, RELEASE and ROLLBACK TO go straight to the SQLite driver.

    SQLAlchemy compiles a fresh clause for each of them (every savepoint has its own name); on a savepoint per unit of
    the database lane's shared transaction (vault/group_commit.py) that cost about twice SQLite's own work. The names
    are SQLAlchemy's own (`sa_savepoint_N`), quoted by the dialect; a driver error is raised as SQLAlchemy's, as
    from any statement, and marks the connection (`SAVEPOINT_FAILED`)."""
    quote = dialect.identifier_preparer.quote

    def run(connection, sql: str) -> None:
        try:
            connection.connection.dbapi_connection.execute(sql)
        except dialect.loaded_dbapi.Error as error:
            connection.info[SAVEPOINT_FAILED] = True
            raise driver_error(sql, error, dialect) from error

    def savepoint(connection, name: str) -> None:
        sql = f"SAVEPOINT {quote(name)}"
        if connection.info.get(SAVEPOINT_NEEDS_TRANSACTION) \
                and not connection.connection.dbapi_connection.in_transaction:
            connection.info[SAVEPOINT_FAILED] = True
            raise driver_error(sql, dialect.loaded_dbapi.OperationalError("no transaction to hold the savepoint"),
                               dialect)
        run(connection, sql)

    dialect.do_savepoint = savepoint
    dialect.do_release_savepoint = lambda connection, name: run(connection, f"RELEASE SAVEPOINT {quote(name)}")
    dialect.do_rollback_to_savepoint = lambda connection, name: run(connection,
                                                                    f"ROLLBACK TO SAVEPOINT {quote(name)}")


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
        _driver_savepoints(engine.dialect)
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
    command.upgrade(cfg, "heads")
    return list(cfg.attributes.get("service_keys_created", []))
