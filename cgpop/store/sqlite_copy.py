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
from cgpop.store.sqlite_base import SqliteDatabase

_LIVE = "m.expunged_at IS NULL AND m.mailbox_id IN (SELECT id FROM mailboxes)"
# The SELECT of each table of COPY_TABLES, its columns in that order.
_EXPORT: dict[str, str] = {
    "counters": "SELECT 'uidvalidity', last FROM uidvalidity_counter",
    "domains": "SELECT id, name FROM domains ORDER BY id",
    "domain_aliases": "SELECT alias, domain_id FROM domain_aliases",
    "accounts": "SELECT id, domain_id, name, salt, iterations, stored_key, server_key, "
    "shared_secret, pop_enabled, xtnd_enabled FROM accounts ORDER BY id",
    "mailboxes": "SELECT id, account_id, name, uidvalidity, next_uid FROM mailboxes ORDER BY id",
    "routes": "SELECT pattern, target FROM routes",
    "acl": "SELECT mailbox_id, identifier, negative, rights FROM acl",
    "group_members": "SELECT group_name, member FROM group_members",
    "bodies": "SELECT b.id, b.size, b.data, b.file FROM bodies b WHERE b.id IN "
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
        conn = self._conn()
        return [
            name
            for name in COPY_TABLES
            if name != "counters"
            and conn.execute(f"SELECT 1 FROM {name} LIMIT 1").fetchone() is not None
        ]

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
