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

# The same limits as cgpop/store/postgres.py (a body above INLINE_MAX is in CHUNK_SIZE rows).
INLINE_MAX = 128 * 1024
CHUNK_SIZE = 256 * 1024
_LIVE = "m.expunged_xid IS NULL AND m.mailbox_id IN (SELECT id FROM mailboxes)"
_EXPORT: dict[str, str] = {
    "counters": "SELECT 'uidvalidity', v FROM uidvalidity",
    "domains": "SELECT id, name FROM domains ORDER BY id",
    "domain_aliases": "SELECT alias, domain_id FROM domain_aliases",
    "accounts": "SELECT id, domain_id, name, salt, iterations, stored_key, server_key, "
    "shared_secret, pop_enabled, xtnd_enabled FROM accounts ORDER BY id",
    "mailboxes": "SELECT id, account_id, name, uidvalidity, next_uid FROM mailboxes ORDER BY id",
    "routes": "SELECT pattern, target FROM routes",
    "acl": "SELECT mailbox_id, identifier, negative, rights FROM acl",
    "group_members": "SELECT group_name, member FROM group_members",
    "bodies": "SELECT b.id, b.size, coalesce(b.data, (SELECT string_agg(c.data, ''::bytea "
    "ORDER BY c.seq) FROM body_chunks c WHERE c.body_id = b.id)) FROM bodies b WHERE b.id IN "
    f"(SELECT m.body_id FROM messages m WHERE {_LIVE}) ORDER BY b.id",
    "messages": "SELECT m.mailbox_id, m.uid, m.body_id, m.size, m.flags, m.internal_date, "
    f"m.x_real_to, m.individual, m.prefix FROM messages m WHERE {_LIVE} "
    "ORDER BY m.mailbox_id, m.uid",
    "message_individuals": "SELECT i.mailbox_id, i.individual, i.uid FROM message_individuals i "
    "JOIN messages m ON m.mailbox_id = i.mailbox_id AND m.uid = i.uid WHERE " + _LIVE,
    "duplicates": "SELECT message_id, rcpt, seen_at FROM duplicates",
    "alerts": "SELECT id, scope, target, text, created FROM alerts ORDER BY id",
    "alerts_delivered": "SELECT alert_id, account, delivered_at FROM alerts_delivered",
    "queue_messages": "SELECT id, sender, account, message, created FROM queue_messages "
    "ORDER BY id",
    "queue_recipients": "SELECT message_id, recipient, "
    "CASE state WHEN 'sending' THEN 'queued' ELSE state END, attempts, next_attempt, "
    "last_error FROM queue_recipients",
    "submissions": "SELECT account, at, recipients FROM submissions",
    "account_quotas": "SELECT account_id, storage_used, messages_used, storage_limit, "
    "messages_limit FROM account_quotas",
    "domain_quotas": "SELECT domain_id, storage_limit, messages_limit FROM domain_quotas",
}
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
            return _nonempty(conn)

    def import_tables(self, tables: Iterable[Table], progress: Progress | None = None) -> int:
        total = 0
        with self._tx() as conn:
            # Nobody else writes while the copy loads (another node starting on it waits).
            conn.execute(f"LOCK TABLE {', '.join(_IDENTITIES)} IN EXCLUSIVE MODE")
            found = _nonempty(conn)
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


def _nonempty(conn: Conn) -> list[str]:
    return [
        name
        for name in COPY_TABLES
        if name != "counters"
        and conn.execute(f"SELECT 1 FROM {name} LIMIT 1").fetchone() is not None
    ]


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
