"""The outbound queue's and the submission record's SQL both backends share (api.OutboundQueue,
api.Submissions): what is due, the queue as `cgpop queue list` shows it, flushing and removing,
and the submission slots. Claiming, recording attempts and bounces stay in the backends: SQLite
serialises them with its one writer, PostgreSQL claims rows with SKIP LOCKED for several nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from cgpop.store.api import (
    Bounce,
    Entry,
    QueueStats,
    RecipientState,
    SubmissionCounts,
    Verdict,
)
from cgpop.store.sql_access import SqlAccess, SqlConn


def bounce_of(
    message_id: Any,
    sender: Any,
    account: Any,
    head: Any,
    created: Any,
    failed: Iterable[Sequence[Any]],
    attempts: Any,
) -> Bounce:
    """A message's bounce from its row and its failed (recipient, last error) pairs, in the
    order given. A last error reads "status text" (api.Update); one without a text (never
    recorded) bounces as a generic permanent failure."""
    failures = []
    for recipient, error in failed:
        status, _, text = (error or "5.0.0 failed").partition(" ")
        failures.append((str(recipient), status, text))
    return Bounce(
        int(message_id),
        str(sender),
        str(account),
        bytes(head),
        float(created),
        tuple(failures),
        int(attempts),
    )


class SqlQueue(SqlAccess):
    # The column that names a submission slot (SQLite's table has only its rowid).
    _SUBMISSION_ID: str

    if TYPE_CHECKING:

        def _lock_submissions(self, conn: Any, account: str) -> None:
            """Hold every other submission of `account` off until this transaction ends."""

    # --- api.OutboundQueue ---
    def _drop_if_done(self, conn: SqlConn, message_id: int) -> None:
        """A message goes when none of its recipients is queued, sending or failed (its sent
        recipients go with it: ON DELETE CASCADE)."""
        self._run(
            conn,
            "DELETE FROM queue_messages WHERE id = ? AND NOT EXISTS (SELECT 1 FROM "
            "queue_recipients r WHERE r.message_id = queue_messages.id AND r.state <> 'sent')",
            (message_id,),
        )

    def next_due(self) -> float | None:
        # Uses the partial index queue_due.
        row = self._row("SELECT min(next_attempt) FROM queue_recipients WHERE state = 'queued'")
        return None if row is None or row[0] is None else float(row[0])

    def flush_queue(self) -> int:
        with self._tx() as conn:
            cur = self._run(
                conn, "UPDATE queue_recipients SET next_attempt = 0 WHERE state = 'queued'"
            )
            return cur.rowcount

    def remove_queued(self, message_id: int) -> bool:
        # The recipients go with the message (ON DELETE CASCADE).
        row = self._write_row("DELETE FROM queue_messages WHERE id = ? RETURNING 1", (message_id,))
        return row is not None

    def list_queue(self) -> list[Entry]:
        with self._reader() as conn:
            recipients: dict[int, list[RecipientState]] = {}
            for message_id, recipient, state, attempts, next_attempt, last_error in self._run(
                conn,
                "SELECT message_id, recipient, state, attempts, next_attempt, last_error"
                ' FROM queue_recipients ORDER BY message_id, recipient COLLATE "C"',
            ):
                recipients.setdefault(int(message_id), []).append(
                    RecipientState(
                        str(recipient), str(state), int(attempts), float(next_attempt), last_error
                    )
                )
            messages = self._run(
                conn,
                "SELECT id, sender, account, length(message), created FROM queue_messages"
                " ORDER BY id",
            ).fetchall()
        return [
            Entry(
                int(id_),
                str(sender),
                str(account),
                int(size),
                float(created),
                tuple(recipients.get(int(id_), ())),
            )
            for id_, sender, account, size, created in messages
        ]

    def queue_stats(self) -> QueueStats:
        row = self._row("SELECT count(*), min(created) FROM queue_messages")
        return QueueStats(int(row[0]), None if row[1] is None else float(row[1]))

    # --- api.Submissions ---
    def submission_counts(self, account: str, since: float) -> SubmissionCounts:
        with self._reader() as conn:
            return self._submission_counts(conn, account, since)

    def _submission_counts(self, conn: SqlConn, account: str, since: float) -> SubmissionCounts:
        row = self._run(
            conn,
            "SELECT count(*), coalesce(sum(recipients), 0) FROM submissions"
            " WHERE account = ? AND at > ?",
            (account, since),
        ).fetchone()
        return SubmissionCounts(int(row[0]), int(row[1]))

    def take_submission_slot(
        self, account: str, recipients: int, now: float, since: float, verdict: Verdict
    ) -> int | str:
        with self._tx() as conn:
            self._lock_submissions(conn, account)
            refused = verdict(self._submission_counts(conn, account, since))
            if refused is not None:
                return refused
            # Rows older than the window never count again; dropping them keeps the table small.
            self._run(
                conn, "DELETE FROM submissions WHERE account = ? AND at <= ?", (account, since)
            )
            row = self._run(
                conn,
                "INSERT INTO submissions (account, at, recipients) VALUES (?, ?, ?) "
                f"RETURNING {self._SUBMISSION_ID}",
                (account, now, recipients),
            ).fetchone()
            return int(row[0])

    def release_submission_slot(self, slot: int) -> None:
        self._write_row(
            f"DELETE FROM submissions WHERE {self._SUBMISSION_ID} = ? RETURNING 1", (slot,)
        )
