"""`cgpop store copy` in the SQLite backend (issue 11): api.Transfer.

The export reads one consistent snapshot on a connection of its own (a read transaction in WAL
mode does not block the server's writers). The import, used to copy another store into a new
embedded one, keeps bodies inline (a copy is not the hot delivery path; the reader streams
inline and file bodies alike) and recounts body references at the end.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cgpop.store.api import (
    COPY_TABLES,
    Progress,
    StoreError,
    Table,
    Unavailable,
    copy_rows,
)
from cgpop.store.sql_copy import export_queries, nonempty_tables
from cgpop.store.sqlite_base import SqliteDatabase

# The SELECT of each table of COPY_TABLES, its columns in that order.
_EXPORT = export_queries(
    expunged="m.expunged_at",
    counters="SELECT 'uidvalidity', last FROM uidvalidity_counter",
    body="b.data, b.file",
)
# Columns SQLite keeps as 0/1 that the copy carries as booleans.
_BOOLEANS = {"accounts": (8, 9), "acl": (2,)}


class SqliteCopy(SqliteDatabase):
    bodies_dir: Path

    def export_tables(self) -> Iterator[Table]:
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("BEGIN")  # one read snapshot for every table
            for name in COPY_TABLES:
                yield Table(name, self._export_rows(conn, name))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()

    def _export_rows(self, conn: sqlite3.Connection, name: str) -> Iterator[tuple[Any, ...]]:
        booleans = _BOOLEANS.get(name, ())
        for row in conn.execute(_EXPORT[name]):
            if name == "bodies":
                body_id, size, data, file = row
                if data is None:
                    data = (self.bodies_dir / file).read_bytes()
                yield body_id, size, data
            elif booleans:
                yield tuple(bool(v) if i in booleans else v for i, v in enumerate(row))
            else:
                yield tuple(row)

    def nonempty_tables(self) -> list[str]:
        return nonempty_tables(self._conn())

    def import_tables(self, tables: Iterable[Table], progress: Progress | None = None) -> int:
        total = 0
        with self._tx() as conn:
            found = self.nonempty_tables()
            if found:
                raise StoreError(f"the target store is not empty: {', '.join(found)}")
            for table in tables:
                rows = copy_rows(table.name, table.rows, progress)
                before = conn.total_changes
                if table.name == "counters":
                    for name, value in rows:
                        if name == "uidvalidity":
                            conn.execute(
                                "UPDATE uidvalidity_counter SET last = max(last, ?)", (value,)
                            )
                    continue
                if table.name == "bodies":
                    conn.executemany(
                        "INSERT INTO bodies(id, size, data, file, refs) VALUES (?, ?, ?, NULL, 0)",
                        rows,
                    )
                else:
                    cols = COPY_TABLES[table.name]
                    marks = ", ".join("?" * len(cols))
                    conn.executemany(
                        f"INSERT INTO {table.name}({', '.join(cols)}) VALUES ({marks})", rows
                    )
                total += conn.total_changes - before
            conn.execute(
                "UPDATE bodies SET refs = (SELECT count(*) FROM messages m "
                "WHERE m.body_id = bodies.id AND m.expunged_at IS NULL)"
            )
        return total
