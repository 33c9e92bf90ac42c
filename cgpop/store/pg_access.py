"""The statements of shared SQL (cgpop/store/sql_access.py) on PostgreSQL's pooled connections
(cgpop/store/pg_base.py): autocommit, so a read or a lone write is one round trip."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pgerrors

from cgpop.store.pg_base import Conn
from cgpop.store.sql_access import BYTE_ORDER, Dialect, SqlAccess, SqlConn


class PgAccess(SqlAccess):
    # pyformat placeholders; byte order is the "C" collation (the default follows the locale).
    _DIALECT = Dialect(
        placeholder="%s", byte_order=BYTE_ORDER, foreign_key_error=pgerrors.ForeignKeyViolation
    )

    if TYPE_CHECKING:

        def _conn(self) -> AbstractContextManager[Conn]: ...

    def _reader(self) -> AbstractContextManager[Conn]:
        return self._conn()

    def _write_row(self, sql: str, args: Sequence[Any] = ()) -> Any:
        with self._conn() as conn:
            return conn.execute(self._DIALECT.sql(sql), args).fetchone()

    def _many(self, conn: SqlConn, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        assert isinstance(conn, psycopg.Connection)
        with conn.cursor() as cur:
            cur.executemany(self._DIALECT.sql(sql), rows)
