"""Hot statements: a Core statement compiled once per dialect and run straight on the session's DBAPI connection.

Owns the execution path of the few statements every authenticated read runs (the token lookup, the consent state and
the record row). SQLAlchemy's execution context costs ~40 µs per statement on this machine, three to four times what
SQLite spends on the statement itself (docs/performance.md). A `HotStatement` keeps everything SQLAlchemy decides — the
SQL text of the same Core statement compiled for the connection's dialect, the parameter order, and the bind and
result type processors (so `UTCDateTime`, booleans and the SQLite datetime strings convert exactly as on the ORM
path) — and skips only the per-call machinery. It uses SQLAlchemy's public API only (`Compiled.string`, `.binds`,
`.positiontup`, `.params`, `TypeEngine.dialect_impl`, `bind_processor`, `result_processor`, the statement's
`exported_columns`); tests/vault/db/test_hot_statements.py compares its rows with the ORM's. Driver errors are
re-raised as SQLAlchemy's own exception classes with the parameters hidden, so callers keep catching `SQLAlchemyError`
and no bound value reaches a message.

Never: builds SQL from values (every value is a bound parameter), runs outside the session's transaction (it uses
the connection the session has checked out and begun), or takes an expanding (IN-list) parameter.
"""

from __future__ import annotations

import weakref
from collections import namedtuple
from collections.abc import Callable
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, exc
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

T = TypeVar("T")
Row = Any  # a namedtuple made per statement: attribute access by column key


def driver_error(sql: str, error: Exception, dialect: Dialect) -> exc.DBAPIError:
    """A driver error as SQLAlchemy's own exception class, with the parameters hidden."""
    return cast(exc.DBAPIError, exc.DBAPIError.instance(sql, None, error, dialect.loaded_dbapi.Error,
                                                        hide_parameters=True, dialect=dialect))


class _Compiled:
    __slots__ = ("binds", "defaults", "named", "names", "prepare", "required", "results", "row", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        if any(bind.expanding for bind in compiled.binds.values()):
            raise ValueError("hot statements take no expanding parameters")
        self.sql: str = compiled.string
        self.named = dialect.paramstyle in ("named", "pyformat")
        # Every parameter the text names, with the values the statement itself fixes (e.g. the 1 of `seq + 1`).
        self.defaults: dict[str, Any] = dict(compiled.params)
        self.required = frozenset(name for name, bind in compiled.binds.items() if bind.required)
        positions = compiled.positiontup or ()
        self.names: tuple[str, ...] = tuple(positions) if not self.named else tuple(self.defaults)
        self.binds = tuple((name, processor) for name in self.names
                           if (processor := compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
                           is not None)
        columns = list(getattr(statement, "exported_columns", ()))  # selected or RETURNING columns, in order
        self.row: Any = namedtuple("Row", [column.key for column in columns], rename=True) if columns else None
        self.results = tuple((index, processor) for index, column in enumerate(columns)
                             if (processor := column.type.dialect_impl(dialect).result_processor(dialect, None))
                             is not None)
        self.prepare = dialect.driver == "psycopg"

    def parameters(self, values: dict[str, Any]) -> dict[str, Any] | tuple[Any, ...]:
        if not self.required.issubset(values):
            raise exc.ArgumentError(f"missing parameters: {sorted(self.required.difference(values))}")
        values = {**self.defaults, **values}
        for name, processor in self.binds:
            values[name] = processor(values[name])
        if self.named:
            return values
        return tuple(values[name] for name in self.names)

    def shape(self, raw: tuple[Any, ...]) -> Row:
        if self.row is None:
            raise exc.ResourceClosedError("this statement returns no rows")
        if self.results:
            shaped = list(raw)
            for index, processor in self.results:
                shaped[index] = processor(shaped[index])
            return self.row._make(shaped)
        return self.row._make(raw)


_CONNECTION_KEY = "fastpath.statements.connection"


def _current_transaction(session: Session) -> SessionTransaction | None:
    return session.get_nested_transaction() or session.get_transaction()


def _connection(session: Session) -> Connection:
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

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        # Per dialect instance (one per engine): two engines of one dialect class may compile differently.
        self._by_dialect: weakref.WeakKeyDictionary[Dialect, _Compiled] = weakref.WeakKeyDictionary()

    def _compiled(self, dialect: Dialect) -> _Compiled:
        compiled = self._by_dialect.get(dialect)
        if compiled is None:
            compiled = self._by_dialect[dialect] = _Compiled(self.statement, dialect)
        return compiled

    def _run(self, session: Session, values: dict[str, Any], fetch: Callable[[Any, _Compiled], T]) -> T:
        connection = _connection(session)
        compiled = self._compiled(connection.dialect)
        params = compiled.parameters(values)
        cursor: Any = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
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

    def first(self, session: Session, values: dict[str, Any]) -> Row | None:
        """The first row (attribute access by column key) or None."""
        def fetch(cursor: Any, compiled: _Compiled) -> Row | None:
            raw = cursor.fetchone()
            return None if raw is None else compiled.shape(raw)
        return self._run(session, values, fetch)

    def rows(self, session: Session, values: dict[str, Any]) -> list[Row]:
        def fetch(cursor: Any, compiled: _Compiled) -> list[Row]:
            return [compiled.shape(raw) for raw in cursor.fetchall()]
        return self._run(session, values, fetch)

    def scan(self, session: Session, values: dict[str, Any], visit: Callable[[Row], bool], *,
             batch: int = 16) -> None:
        """Hand rows to `visit` in order until it returns True (the rest is never fetched) or they run out."""
        def fetch(cursor: Any, compiled: _Compiled) -> None:
            while raws := cursor.fetchmany(batch):
                for raw in raws:
                    if visit(compiled.shape(raw)):
                        return
        self._run(session, values, fetch)
