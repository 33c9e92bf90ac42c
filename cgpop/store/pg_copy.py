"""`cgpop store copy` in the PostgreSQL backend (issue 11): api.Transfer.

The import loads each table with COPY in one transaction (all or nothing: a failed copy leaves
the target empty, so it can simply be run again). Bodies above the inline limit are split into
chunk rows as delivery splits them; while the `bodies` COPY runs they wait in a temporary file
(a connection carries one COPY at a time), so memory stays bounded by one body. Identity
sequences are moved past the copied ids afterwards, so new rows never take a copied id.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

from cgpop.store.api import COPY_TABLES, Progress, StoreError, Table, copy_rows
from cgpop.store.pg_base import Conn, PgDatabase
from cgpop.store.sql_copy import export_queries, nonempty_tables

# The same limits as cgpop/store/postgres.py (a body above INLINE_MAX is in CHUNK_SIZE rows).
INLINE_MAX = 128 * 1024
CHUNK_SIZE = 256 * 1024
# The SELECT of each table of COPY_TABLES, its columns in that order; a chunked body whole.
_EXPORT = export_queries(
    expunged="m.expunged_xid",
    counters="SELECT 'uidvalidity', v FROM uidvalidity",
    body="coalesce(b.data, (SELECT string_agg(c.data, ''::bytea ORDER BY c.seq) "
    "FROM body_chunks c WHERE c.body_id = b.id))",
)
# Tables whose `id` is an identity column: its sequence moves past the copied ids.
_IDENTITIES = ("domains", "accounts", "mailboxes", "bodies", "alerts", "queue_messages")
# Rows a server-side cursor of the export fetches per round trip.
_FETCH = 1000


class PgCopy(PgDatabase):
    def export_tables(self) -> Iterator[Table]:
        with self._conn() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            for name in COPY_TABLES:
                yield Table(name, _cursor_rows(conn, name))

    def nonempty_tables(self) -> list[str]:
        with self._conn() as conn:
            return nonempty_tables(conn)

    def import_tables(self, tables: Iterable[Table], progress: Progress | None = None) -> int:
        total = 0
        with self._tx() as conn:
            # Nobody else writes while the copy loads (another node starting on it waits).
            conn.execute(f"LOCK TABLE {', '.join(_IDENTITIES)} IN EXCLUSIVE MODE")
            found = nonempty_tables(conn)
            if found:
                raise StoreError(f"the target database is not empty: {', '.join(found)}")
            for table in tables:
                rows = copy_rows(table.name, table.rows, progress)
                if table.name == "counters":
                    for name, value in rows:
                        if name == "uidvalidity":
                            conn.execute(
                                "UPDATE uidvalidity SET v = greatest(v, %s)", (int(value),)
                            )
                elif table.name == "bodies":
                    total += _copy_bodies(conn, rows)
                else:
                    cols = ", ".join(COPY_TABLES[table.name])
                    with conn.cursor().copy(f"COPY {table.name} ({cols}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                            total += 1
            for name in _IDENTITIES:
                conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                    f"coalesce(max(id), 0) + 1, false) FROM {name}"
                )
        return total


def _cursor_rows(conn: Conn, name: str) -> Iterator[tuple[Any, ...]]:
    with conn.cursor(name=f"cgpop_export_{name}") as cur:
        cur.itersize = _FETCH
        cur.execute(_EXPORT[name])
        for row in cur:
            yield tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)


def _copy_bodies(conn: Conn, rows: Iterable[tuple[Any, ...]]) -> int:
    """COPY the bodies; large ones go to chunk rows, spooled meanwhile as (id, length, data)."""
    count = 0
    with tempfile.TemporaryFile() as spool:
        with conn.cursor().copy("COPY bodies (id, size, data, chunks) FROM STDIN") as copy:
            for body_id, size, data in rows:
                data = bytes(data)
                if len(data) <= INLINE_MAX:
                    copy.write_row((body_id, size, data, 0))
                else:
                    chunks = -(-len(data) // CHUNK_SIZE)
                    copy.write_row((body_id, size, None, chunks))
                    spool.write(struct.pack("!QQ", body_id, len(data)))
                    spool.write(data)
                count += 1
        spool.seek(0)
        with conn.cursor().copy("COPY body_chunks (body_id, seq, data) FROM STDIN") as copy:
            for body_id, seq, chunk in _spooled_chunks(spool):
                copy.write_row((body_id, seq, chunk))
    return count


def _spooled_chunks(spool: IO[bytes]) -> Iterator[tuple[int, int, bytes]]:
    while head := spool.read(16):
        body_id, length = struct.unpack("!QQ", head)
        for seq, start in enumerate(range(0, length, CHUNK_SIZE)):
            yield body_id, seq, spool.read(min(CHUNK_SIZE, length - start))
