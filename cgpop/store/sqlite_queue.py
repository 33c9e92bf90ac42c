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
    Entry,
    Job,
    Outbound,
    QueueStats,
    RecipientState,
    SubmissionCounts,
    Update,
    Verdict,
)
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


def _collect(conn: sqlite3.Connection, message_id: int) -> None:
    left = conn.execute(
        "SELECT 1 FROM queue_recipients WHERE message_id = ? AND state != 'sent' LIMIT 1",
        (message_id,),
    ).fetchone()
    if left is None:
        conn.execute("DELETE FROM queue_recipients WHERE message_id = ?", (message_id,))
        conn.execute("DELETE FROM queue_messages WHERE id = ?", (message_id,))


def _counts(conn: sqlite3.Connection, account: str, since: float) -> SubmissionCounts:
    messages, recipients = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(recipients), 0) FROM submissions"
        " WHERE account = ? AND at > ?",
        (account, since),
    ).fetchone()
    return SubmissionCounts(int(messages), int(recipients))


class SqliteQueue(SqliteDatabase):
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
            _collect(conn, message_id)

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
        bounces: list[Bounce] = []
        for message_id, sender, account, head, created, failed, attempts in self._conn().execute(
            "SELECT m.id, m.sender, m.account, substr(m.message, 1, ?), m.created, f.failed,"
            " f.attempts FROM ("
            "   SELECT message_id, json_group_array(json_array(recipient, last_error)) AS failed,"
            "     MAX(attempts) AS attempts FROM queue_recipients"
            "   WHERE state = 'failed' AND next_attempt <= ?"
            "   GROUP BY message_id ORDER BY message_id LIMIT ?"
            " ) AS f JOIN queue_messages AS m ON m.id = f.message_id ORDER BY m.id",
            (BOUNCE_HEAD, now, limit),
        ):
            failures = []
            for recipient, error in sorted(json.loads(failed)):
                status, _, text = (error or "5.0.0 failed").partition(" ")
                failures.append((recipient, status, text))
            bounces.append(
                Bounce(message_id, sender, account, bytes(head), created, tuple(failures), attempts)
            )
        return bounces

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
            _collect(conn, message_id)

    def next_due(self) -> float | None:
        # Uses the partial index queue_due.
        row = (
            self._conn()
            .execute("SELECT MIN(next_attempt) FROM queue_recipients WHERE state = 'queued'")
            .fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    def flush_queue(self) -> int:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE queue_recipients SET next_attempt = 0 WHERE state = 'queued'"
            )
            return cur.rowcount

    def remove_queued(self, message_id: int) -> bool:
        with self._tx() as conn:
            conn.execute("DELETE FROM queue_recipients WHERE message_id = ?", (message_id,))
            cur = conn.execute("DELETE FROM queue_messages WHERE id = ?", (message_id,))
            return cur.rowcount > 0

    def list_queue(self) -> list[Entry]:
        conn = self._conn()
        recipients: dict[int, list[RecipientState]] = {}
        for message_id, *rest in conn.execute(
            "SELECT message_id, recipient, state, attempts, next_attempt, last_error"
            " FROM queue_recipients ORDER BY message_id, recipient"
        ):
            recipients.setdefault(message_id, []).append(RecipientState(*rest))
        return [
            Entry(id_, sender, account, size, created, tuple(recipients.get(id_, ())))
            for id_, sender, account, size, created in conn.execute(
                "SELECT id, sender, account, length(message), created FROM queue_messages"
                " ORDER BY id"
            )
        ]

    def queue_stats(self) -> QueueStats:
        row = self._conn().execute("SELECT COUNT(*), MIN(created) FROM queue_messages").fetchone()
        return QueueStats(int(row[0]), None if row[1] is None else float(row[1]))

    # --- api.Submissions ---
    def submission_counts(self, account: str, since: float) -> SubmissionCounts:
        return _counts(self._conn(), account, since)

    def take_submission_slot(
        self, account: str, recipients: int, now: float, since: float, verdict: Verdict
    ) -> int | str:
        with self._tx() as conn:
            refused = verdict(_counts(conn, account, since))
            if refused is not None:
                return refused
            # Rows older than the window never count again; dropping them keeps the table small.
            conn.execute("DELETE FROM submissions WHERE account = ? AND at <= ?", (account, since))
            cur = conn.execute(
                "INSERT INTO submissions (account, at, recipients) VALUES (?, ?, ?)",
                (account, now, recipients),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def release_submission_slot(self, slot: int) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM submissions WHERE rowid = ?", (slot,))
