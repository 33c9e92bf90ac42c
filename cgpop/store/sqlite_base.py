"""The SQLite backend's connections: one per thread, WAL, durable transactions, and its errors
turned into the store's own (`Unavailable`) at the boundary."""

from __future__ import annotations

import contextlib
import functools
import inspect
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cgpop.store.api import NotFound, TemporaryFailure, Unavailable
from cgpop.store.sql_access import Dialect, SqlAccess, SqlConn

_BUSY_TIMEOUT_MS = 30_000
C = TypeVar("C", bound=type)


class SqliteDatabase(SqlAccess):
    """Per-thread connections to one database file (the store's methods run on worker
    threads, one connection each)."""

    # Shared SQL is SQLite's own spelling; BINARY, SQLite's default collation, is byte order.
    _DIALECT = Dialect(placeholder="?", byte_order="", foreign_key_error=sqlite3.IntegrityError)

    def _domain_id(self, conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute("SELECT id FROM domains WHERE name = ?", (name.lower(),)).fetchone()
        if row is None:
            raise NotFound(f"no such domain: {name}")
        return int(row[0])

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.db_path, isolation_level=None, check_same_thread=False, timeout=30
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (backend tests inspect tables through it)."""
        return self._conn()

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (rollback on error), durable (synchronous=FULL)."""
        return self._tx()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise TemporaryFailure(f"database busy: {exc}") from exc
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()

    # --- the statements of shared SQL (cgpop/store/sql_access.py) ---
    def _reader(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return contextlib.nullcontext(self._conn())

    # The thread's own connection needs no context around a read: the login path's lookups
    # (account, mailbox, ACL) skip it.
    def _row(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._conn().execute(self._DIALECT.sql(sql), args).fetchone()

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self._conn().execute(self._DIALECT.sql(sql), args).fetchall()

    def _write_row(self, sql: str, args: Sequence[Any] = ()) -> Any:
        # In a transaction of its own, as every write here: BEGIN IMMEDIATE takes the write
        # lock first (waiting up to busy_timeout), so the statement never has to upgrade.
        with self._tx() as conn:
            rows = conn.execute(self._DIALECT.sql(sql), args).fetchall()
        return rows[0] if rows else None

    def _many(self, conn: SqlConn, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        assert isinstance(conn, sqlite3.Connection)
        conn.executemany(self._DIALECT.sql(sql), rows)

    def close(self) -> None:
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._conns.clear()
        self._local = threading.local()


def _translated(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc

    return call


def translate_errors(cls: C) -> C:
    """Every public method (and `__init__`) of `cls` raises `Unavailable` for SQLite's own
    errors, so callers need only the store's exception types."""
    found: dict[str, Callable[..., Any]] = {}
    for klass in cls.__mro__[:-1]:  # not `object`; the first definition wins
        for name, value in vars(klass).items():
            public = name == "__init__" or not name.startswith("_")
            if public and inspect.isfunction(value):
                found.setdefault(name, value)
    for name, value in found.items():
        setattr(cls, name, _translated(value))
    return cls
