"""What SQL shared by the store's backends needs from a backend: a connection that runs a
statement and hands back a cursor, a transaction, and the backend's spelling of the statement.

Shared SQL is written once, with `?` placeholders, and `COLLATE "C"` after a column whose rows
must come in byte order (PostgreSQL's default collation sorts by locale, SQLite's by bytes). A
backend's `Dialect` turns that text into its own, once per text (a dictionary lookup after the
first call), so a shared method costs no more per call than the backend's own did.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

# Shared SQL's marker of a byte-ordered sort (see the module docstring).
BYTE_ORDER = ' COLLATE "C"'


class SqlCursor(Protocol):
    """What shared code reads from a statement (sqlite3.Cursor and psycopg's Cursor alike)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class SqlConn(Protocol):
    """A connection as shared code uses it: one statement at a time."""

    def execute(self, sql: str, args: Sequence[Any] = ..., /) -> SqlCursor: ...


class Dialect:
    """How one backend spells shared SQL, and which of its errors is a broken foreign key."""

    def __init__(
        self, *, placeholder: str, byte_order: str, foreign_key_error: type[Exception]
    ) -> None:
        self._placeholder = placeholder
        self._byte_order = byte_order
        self.foreign_key_error = foreign_key_error
        self._spelled: dict[str, str] = {}
        self._lock = threading.Lock()

    def sql(self, text: str) -> str:
        """`text` in this backend's spelling."""
        try:
            return self._spelled[text]
        except KeyError:
            pass
        spelled = text.replace(BYTE_ORDER, self._byte_order)
        if self._placeholder != "?":
            # pyformat placeholders: a literal % is written %% (no shared SQL has a `?` other
            # than a placeholder: no string literal or operator of shared SQL contains one).
            spelled = spelled.replace("%", "%%").replace("?", self._placeholder)
        with self._lock:
            self._spelled[text] = spelled
        return spelled


class SqlAccess:
    """The statements shared SQL classes run, on top of a backend's connections. A backend
    provides `_DIALECT`; `_reader`, a connection whose statements commit each on its own (for
    reads); `_tx`, a transaction; `_write_row`, one write statement that returns rows (RETURNING),
    committed, and its first row or None; `_many`, one statement for each of many rows, in
    the caller's transaction. Each takes shared SQL and spells it with `_DIALECT`."""

    _DIALECT: Dialect

    if TYPE_CHECKING:

        def _reader(self) -> AbstractContextManager[SqlConn]: ...

        def _tx(self) -> AbstractContextManager[SqlConn]: ...

        def _write_row(self, sql: str, args: Sequence[Any] = ()) -> Any: ...

        def _many(self, conn: SqlConn, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

        # The id of a domain (NotFound when there is none), on the backend's own connection
        # type: each backend's base has it.
        def _domain_id(self, conn: Any, name: str) -> int: ...

    def _run(self, conn: SqlConn, sql: str, args: Sequence[Any] = ()) -> SqlCursor:
        """Run shared SQL on `conn` (inside the caller's transaction, if any)."""
        return conn.execute(self._DIALECT.sql(sql), args)

    def _row(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """The first row of a read (None when there is none)."""
        with self._reader() as conn:
            return conn.execute(self._DIALECT.sql(sql), args).fetchone()

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Every row of a read."""
        with self._reader() as conn:
            return conn.execute(self._DIALECT.sql(sql), args).fetchall()
