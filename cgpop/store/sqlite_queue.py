"""The XTND XMIT outbound queue and submission record in the SQLite backend (schema migration 5):
api.OutboundQueue and api.Submissions. The states and their rules are in api.OutboundQueue."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

from cgpop import spool
from cgpop.spool import Octets
from cgpop.store.api import (
    BOUNCE_BATCH,
    BOUNCE_HEAD,
    Bounce,
    Job,
    Outbound,
    Update,
)
from cgpop.store.sql_queue import SqlQueue, bounce_of
from cgpop.store.sqlite_base import SqliteDatabase


def _enqueue(conn: sqlite3.Connection, outbound: Outbound, now: float) -> int:
    """Insert one message for its recipients, due at once. Call inside a transaction. A spooled
    message is written into its BLOB chunk by chunk (cgpop/spool.py), never whole."""
    message = outbound.message
    cur = conn.execute(
        "INSERT INTO queue_messages (sender, account, message, created)"
        " VALUES (?, ?, coalesce(?, zeroblob(?)), ?)",
        (outbound.sender, outbound.account, _blob_value(message), spool.size_of(message), now),
    )
    message_id = cur.lastrowid
    assert message_id is not None
    _write_blob(conn, "queue_messages", "message", message_id, message)
    conn.executemany(
        "INSERT INTO queue_recipients (message_id, recipient, next_attempt) VALUES (?, ?, ?)",
        [(message_id, r, now) for r in outbound.recipients],
    )
    return message_id


def _blob_value(message: Octets) -> bytes | None:
    """The parameter for a BLOB column that `_write_blob` fills: the octets, or None for a
    spooled message (the SQL then writes `coalesce(?, zeroblob(size))`)."""
    return message if isinstance(message, bytes) else None


def _write_blob(
    conn: sqlite3.Connection, table: str, column: str, rowid: int, message: Octets
) -> None:
    """Fill a zeroblob with a spooled message, chunk by chunk (SQLite incremental BLOB I/O),
    so the message is never whole in memory."""
    if isinstance(message, bytes):
        return
    with conn.blobopen(table, column, rowid) as blob:
        for chunk in message.chunks():
            blob.write(chunk)


class SqliteQueue(SqliteDatabase, SqlQueue):
    _SUBMISSION_ID = "rowid"

    # --- api.OutboundQueue ---
    def enqueue(self, outbound: Outbound, now: float) -> int:
        with self._tx() as conn:
            return _enqueue(conn, outbound, now)

    def recover_queue(self, now: float) -> int:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE queue_recipients SET state = 'queued', next_attempt = ?,"
                " last_error = COALESCE(last_error, 'interrupted while sending')"
                " WHERE state = 'sending'",
                (now,),
            )
            return cur.rowcount

    def claim_due(self, now: float, limit: int) -> list[Job]:
        with self._tx() as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT message_id FROM queue_recipients"
                    " WHERE state = 'queued' AND next_attempt <= ? ORDER BY message_id LIMIT ?",
                    (now, limit),
                )
            ]
            jobs: list[Job] = []
            for message_id in ids:
                # Inside the transaction the row exists: its recipients were just seen and the
                # foreign key deletes them with it.
                sender, message, created = conn.execute(
                    "SELECT sender, message, created FROM queue_messages WHERE id = ?",
                    (message_id,),
                ).fetchone()
                rows = conn.execute(
                    "SELECT recipient, attempts FROM queue_recipients WHERE message_id = ?"
                    " AND state = 'queued' AND next_attempt <= ? ORDER BY recipient",
                    (message_id, now),
                ).fetchall()
                conn.execute(
                    "UPDATE queue_recipients SET state = 'sending' WHERE message_id = ?"
                    " AND state = 'queued' AND next_attempt <= ?",
                    (message_id, now),
                )
                jobs.append(
                    Job(
                        message_id,
                        sender,
                        bytes(message),
                        created,
                        tuple(r[0] for r in rows),
                        tuple(r[1] for r in rows),
                    )
                )
            return jobs

    def record_attempt(self, message_id: int, updates: Iterable[Update]) -> None:
        with self._tx() as conn:
            conn.executemany(
                "UPDATE queue_recipients SET state = ?, next_attempt = ?, last_error = ?,"
                " attempts = attempts + 1 WHERE message_id = ? AND recipient = ?",
                [
                    (u.state.value, u.next_attempt, u.last_error, message_id, u.recipient)
                    for u in updates
                ],
            )
            self._drop_if_done(conn, message_id)

    def requeue(self, message_id: int, recipients: Sequence[str], when: float) -> None:
        with self._tx() as conn:
            conn.executemany(
                "UPDATE queue_recipients SET state = 'queued', next_attempt = ?,"
                " attempts = attempts + 1,"
                " last_error = COALESCE(last_error, 'outcome of the attempt not recorded')"
                " WHERE message_id = ? AND recipient = ? AND state = 'sending'",
                [(when, message_id, r) for r in recipients],
            )

    def pending_bounces(self, now: float, limit: int = BOUNCE_BATCH) -> list[Bounce]:
        rows = self._conn().execute(
            "SELECT m.id, m.sender, m.account, substr(m.message, 1, ?), m.created, f.failed,"
            " f.attempts FROM ("
            "   SELECT message_id, json_group_array(json_array(recipient, last_error)) AS failed,"
            "     MAX(attempts) AS attempts FROM queue_recipients"
            "   WHERE state = 'failed' AND next_attempt <= ?"
            "   GROUP BY message_id ORDER BY message_id LIMIT ?"
            " ) AS f JOIN queue_messages AS m ON m.id = f.message_id ORDER BY m.id",
            (BOUNCE_HEAD, now, limit),
        )
        return [
            bounce_of(mid, sender, account, head, created, sorted(json.loads(failed)), attempts)
            for mid, sender, account, head, created, failed, attempts in rows
        ]

    def defer_bounce(self, message_id: int, recipients: Sequence[str], when: float) -> None:
        with self._tx() as conn:
            conn.executemany(
                "UPDATE queue_recipients SET next_attempt = ?, attempts = attempts + 1"
                " WHERE message_id = ? AND recipient = ? AND state = 'failed'",
                [(when, message_id, r) for r in recipients],
            )

    def finish_bounce(self, message_id: int, recipients: Sequence[str]) -> None:
        with self._tx() as conn:
            conn.executemany(
                "DELETE FROM queue_recipients WHERE message_id = ? AND recipient = ?"
                " AND state = 'failed'",
                [(message_id, r) for r in recipients],
            )
            self._drop_if_done(conn, message_id)

    # --- api.Submissions ---
    def _lock_submissions(self, conn: sqlite3.Connection, account: str) -> None:
        pass  # the transaction holds SQLite's one write lock already (BEGIN IMMEDIATE)
