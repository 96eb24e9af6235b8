"""Hot statements: a Core statement compiled once per dialect and run straight on the session's DBAPI connection.

Owns the execution path of the few statements every request runs (the audit chain step here; the token lookup, the
consent state and the record row in vault/). SQLAlchemy's execution context costs ~40 µs per statement on this
machine, three to four times what SQLite spends on the statement itself (bench/bench_http.py, docs/performance.md),
and an authenticated read runs six of them. A `HotStatement` keeps everything SQLAlchemy decides — the SQL text of
the same Core statement compiled for the connection's dialect, the parameter order, and the bind and result type
processors (so `UTCDateTime`, booleans and the SQLite datetime strings convert exactly as on the ORM path) — and
skips only the per-call machinery. Driver errors are re-raised as SQLAlchemy's own exception classes with the
parameters hidden, so callers keep catching `SQLAlchemyError` and no bound value reaches a message.

Never: builds SQL from values (every value is a bound parameter), runs outside the session's transaction (it uses
the connection the session has checked out and begun), or takes an expanding (IN-list) parameter.
"""

from __future__ import annotations

import weakref
from collections import namedtuple
from collections.abc import Callable
from typing import Any

from sqlalchemy import exc
from sqlalchemy.orm import Session


def driver_error(sql: str, error: Exception, dialect) -> exc.DBAPIError:
    """A driver error as SQLAlchemy's own exception class, with the parameters hidden."""
    return exc.DBAPIError.instance(sql, None, error, dialect.loaded_dbapi.Error, hide_parameters=True,
                                   dialect=dialect)


class _Compiled:
    __slots__ = ("binds", "defaults", "named", "names", "prepare", "required", "results", "row", "sql")

    def __init__(self, statement, dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        if any(getattr(b, "expanding", False) for b in compiled.binds.values()):
            raise ValueError("hot statements take no expanding parameters")
        self.sql: str = compiled.string
        self.named = dialect.paramstyle in ("named", "pyformat")
        # Every parameter the text names, with the values the statement itself fixes (e.g. the 1 of `seq + 1`).
        self.defaults: dict[str, Any] = compiled.construct_params(_check=False)
        self.required = frozenset(name for name, bind in compiled.binds.items() if bind.required)
        self.names: tuple[str, ...] = tuple(compiled.positiontup) if not self.named else tuple(self.defaults)
        self.binds = tuple((name, processor) for name in self.names
                           if (processor := compiled.binds[name].type._cached_bind_processor(dialect)) is not None)
        columns = compiled._result_columns  # (keyname, name, objects, type) per selected or returned column
        self.row = namedtuple("Row", [c[0] for c in columns], rename=True) if columns else None
        self.results = tuple((index, processor) for index, column in enumerate(columns)
                             if (processor := column[3]._cached_result_processor(dialect, None)) is not None)
        self.prepare = dialect.driver == "psycopg"

    def parameters(self, values: dict[str, Any]):
        if not self.required.issubset(values):
            raise exc.ArgumentError(f"missing parameters: {sorted(self.required.difference(values))}")
        values = {**self.defaults, **values}
        for name, processor in self.binds:
            values[name] = processor(values[name])
        if self.named:
            return values
        return tuple(values[name] for name in self.names)

    def shape(self, raw: tuple):
        if self.results:
            raw = list(raw)
            for index, processor in self.results:
                raw[index] = processor(raw[index])
        return self.row._make(raw)


_CONNECTION_KEY = "audit.statements.connection"


def _current_transaction(session: Session):
    return session.get_nested_transaction() or session.get_transaction()


def _connection(session: Session):
    """The session's connection, asked of the ORM once per (sub)transaction: the ORM's `Session.connection()` walks
    its transaction state machine on every call. A new savepoint, a finished transaction or one that a failed flush
    deactivated goes back to the ORM, which emits the SAVEPOINT or raises PendingRollbackError as it always does."""
    transaction = _current_transaction(session)
    cached = session.info.get(_CONNECTION_KEY)
    if transaction is not None and transaction.is_active and cached is not None and cached[0] is transaction:
        return cached[1]
    connection = session.connection()
    session.info[_CONNECTION_KEY] = (_current_transaction(session), connection)
    return connection


class HotStatement:
    """One Core statement (select, insert, update … returning, or text with typed bindparams)."""

    def __init__(self, statement) -> None:
        self.statement = statement
        # Per dialect instance (one per engine): two engines of one dialect class may compile differently.
        self._by_dialect: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _compiled(self, dialect) -> _Compiled:
        compiled = self._by_dialect.get(dialect)
        if compiled is None:
            compiled = self._by_dialect[dialect] = _Compiled(self.statement, dialect)
        return compiled

    def _run(self, session: Session, values: dict[str, Any], fetch):
        connection = _connection(session)
        compiled = self._compiled(connection.dialect)
        params = compiled.parameters(values)
        dbapi_connection = connection.connection.dbapi_connection
        cursor = dbapi_connection.cursor()
        try:
            if compiled.prepare:
                cursor.execute(compiled.sql, params, prepare=True)
            else:
                cursor.execute(compiled.sql, params)
            return fetch(cursor, compiled)
        except connection.dialect.loaded_dbapi.Error as error:
            raise driver_error(compiled.sql, error, connection.dialect) from error
        finally:
            cursor.close()

    def execute(self, session: Session, values: dict[str, Any]) -> None:
        """Run a statement that returns no rows."""
        self._run(session, values, lambda cursor, compiled: None)

    def execute_many(self, connection, rows: list[dict[str, Any]]) -> None:
        """Run a statement that returns no rows once per parameter set, in one driver call, on `connection` (a
        Connection inside the transaction the rows belong to)."""
        if not rows:
            return
        compiled = self._compiled(connection.dialect)
        params = [compiled.parameters(values) for values in rows]
        cursor = connection.connection.dbapi_connection.cursor()
        try:
            cursor.executemany(compiled.sql, params)
        except connection.dialect.loaded_dbapi.Error as error:
            raise driver_error(compiled.sql, error, connection.dialect) from error
        finally:
            cursor.close()

    def first(self, session: Session, values: dict[str, Any]):
        """The first row (attribute access by column name) or None."""
        def fetch(cursor, compiled):
            raw = cursor.fetchone()
            return None if raw is None else compiled.shape(raw)
        return self._run(session, values, fetch)

    def rows(self, session: Session, values: dict[str, Any]) -> list:
        def fetch(cursor, compiled):
            return [compiled.shape(raw) for raw in cursor.fetchall()]
        return self._run(session, values, fetch)

    def scan(self, session: Session, values: dict[str, Any], visit: Callable[[Any], bool], *, batch: int = 16) -> None:
        """Hand rows to `visit` in order until it returns True (the rest is never fetched) or they run out."""
        def fetch(cursor, compiled):
            while raws := cursor.fetchmany(batch):
                for raw in raws:
                    if visit(compiled.shape(raw)):
                        return
        self._run(session, values, fetch)
