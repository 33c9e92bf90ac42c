"""The durable outbound queue of XTND XMIT: tables queue_messages and queue_recipients (schema 5).

Blocking SQLite work; the server runs it on its writer thread (`Gateway.write`), the CLI directly.
One message row holds the message as relayed (Bcc already removed); one recipient row per remote
recipient carries its state:

* `queued`: waiting for `next_attempt` (Unix time; 0 after `cgpop queue flush`).
* `sending`: claimed by the relay worker, an SMTP transaction may be in flight. Left over at
  start-up it means the server stopped between `send()` and the bookkeeping, so whether the
  remote server took the message is unknown. `recover` puts such rows back to `queued`:
  at-least-once, a possible duplicate rather than a message lost after the sender was told
  "+OK Message sent successfully" (RFC 5321 section 6.1; the same choice as `xtnd.relay`).
* `sent`: accepted by the next hop; kept until the whole message is done.
* `failed`: needs a bounce. `last_error` is "STATUS DIAGNOSTIC" (RFC 3463 status first); the row
  is deleted once the DSN is in the sender's INBOX, so a crash in between bounces twice, never
  zero times. `next_attempt` is when the DSN is due (0 when the row fails): a DSN delivery that
  failed is deferred (`defer_bounce`) rather than retried on every pass of the worker.

A message row is deleted when none of its recipients is queued, sending or failed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from cgpop import spool
from cgpop.spool import Octets
from cgpop.store.api import SqlAccess

__all__ = [
    "Bounce",
    "Entry",
    "Job",
    "RecipientState",
    "Update",
    "claim_due",
    "defer_bounce",
    "enqueue",
    "finish_bounce",
    "flush",
    "list_queue",
    "next_due",
    "pending_bounces",
    "record",
    "recover",
    "remove",
    "requeue",
]

# The start of a failed message that `pending_bounces` loads: a DSN carries only the original
# header block (RFC 6522 section 4), which `xtnd.dsn.build_dsn` bounds to 64 KiB; twice that is
# more than its cut ever looks at, so the (up to 25 MiB) body stays on disk.
BOUNCE_HEAD = 128 * 1024
# Messages bounced per pass of the worker: bounds the memory one pass holds (BOUNCE_HEAD each).
BOUNCE_BATCH = 20


class State(Enum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Job:
    """One message and the recipients of it claimed for one delivery attempt."""

    message_id: int
    sender: str
    message: bytes
    created: float
    recipients: tuple[str, ...]
    attempts: tuple[int, ...]  # failed attempts so far, per recipient


@dataclass(frozen=True, slots=True)
class Update:
    """The outcome of an attempt for one recipient: its new state and bookkeeping."""

    recipient: str
    state: State
    next_attempt: float = 0.0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Bounce:
    """Failed recipients of one message that still need a DSN: (recipient, status, text).

    `head` is the start of the message (`BOUNCE_HEAD` octets, enough for its header block);
    `attempts` the most any of these rows has had, relay and DSN attempts together.
    """

    message_id: int
    sender: str
    account: str
    head: bytes
    created: float
    failures: tuple[tuple[str, str, str], ...]
    attempts: int


@dataclass(frozen=True, slots=True)
class RecipientState:
    recipient: str
    state: str
    attempts: int
    next_attempt: float
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Entry:
    """One queued message as `cgpop queue list` shows it."""

    id: int
    sender: str
    account: str
    size: int
    created: float
    recipients: tuple[RecipientState, ...]


def enqueue(
    conn: sqlite3.Connection,
    *,
    sender: str,
    account: str,
    message: Octets,
    recipients: Sequence[str],
    now: float,
) -> int:
    """Insert one message for `recipients`, due at once. Call inside a transaction. A spooled
    message is written into its BLOB chunk by chunk (cgpop/spool.py), never whole."""
    cur = conn.execute(
        "INSERT INTO queue_messages (sender, account, message, created)"
        " VALUES (?, ?, coalesce(?, zeroblob(?)), ?)",
        (sender, account, spool.blob_value(message), spool.size_of(message), now),
    )
    message_id = cur.lastrowid
    assert message_id is not None
    spool.write_blob(conn, "queue_messages", "message", message_id, message)
    conn.executemany(
        "INSERT INTO queue_recipients (message_id, recipient, next_attempt) VALUES (?, ?, ?)",
        [(message_id, r, now) for r in recipients],
    )
    return message_id


def recover(store: SqlAccess, now: float) -> int:
    """Start-up: rows left `sending` are requeued, due now (at-least-once; module docstring)."""
    with store.transaction() as conn:
        cur = conn.execute(
            "UPDATE queue_recipients SET state = 'queued', next_attempt = ?,"
            " last_error = COALESCE(last_error, 'interrupted while sending')"
            " WHERE state = 'sending'",
            (now,),
        )
        return cur.rowcount


def claim_due(store: SqlAccess, now: float, limit: int) -> list[Job]:
    """Mark up to `limit` messages' due recipients `sending` and return them as jobs."""
    with store.transaction() as conn:
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
                "SELECT sender, message, created FROM queue_messages WHERE id = ?", (message_id,)
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


def record(store: SqlAccess, message_id: int, updates: Iterable[Update]) -> None:
    """Store the outcome of an attempt; drop the message when nothing is left to do."""
    with store.transaction() as conn:
        conn.executemany(
            "UPDATE queue_recipients SET state = ?, next_attempt = ?, last_error = ?,"
            " attempts = attempts + 1 WHERE message_id = ? AND recipient = ?",
            [
                (u.state.value, u.next_attempt, u.last_error, message_id, u.recipient)
                for u in updates
            ],
        )
        _collect(conn, message_id)


def requeue(store: SqlAccess, message_id: int, recipients: Sequence[str], when: float) -> None:
    """The outcome of an attempt could not be stored: its recipients still `sending` are queued
    again for `when`, counted as a failed attempt (at-least-once, as `recover`)."""
    with store.transaction() as conn:
        conn.executemany(
            "UPDATE queue_recipients SET state = 'queued', next_attempt = ?,"
            " attempts = attempts + 1,"
            " last_error = COALESCE(last_error, 'outcome of the attempt not recorded')"
            " WHERE message_id = ? AND recipient = ? AND state = 'sending'",
            [(when, message_id, r) for r in recipients],
        )


def pending_bounces(store: SqlAccess, now: float, limit: int = BOUNCE_BATCH) -> list[Bounce]:
    """Up to `limit` messages with failed recipients whose DSN is due. Reads only."""
    bounces: list[Bounce] = []
    for message_id, sender, account, head, created, failed, attempts in store.connection().execute(
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


def defer_bounce(store: SqlAccess, message_id: int, recipients: Sequence[str], when: float) -> None:
    """The DSN for these failed recipients could not be delivered: try again at `when`."""
    with store.transaction() as conn:
        conn.executemany(
            "UPDATE queue_recipients SET next_attempt = ?, attempts = attempts + 1"
            " WHERE message_id = ? AND recipient = ? AND state = 'failed'",
            [(when, message_id, r) for r in recipients],
        )


def finish_bounce(store: SqlAccess, message_id: int, recipients: Sequence[str]) -> None:
    """The DSN for these failed recipients is delivered: forget them."""
    with store.transaction() as conn:
        conn.executemany(
            "DELETE FROM queue_recipients WHERE message_id = ? AND recipient = ?"
            " AND state = 'failed'",
            [(message_id, r) for r in recipients],
        )
        _collect(conn, message_id)


def _collect(conn: sqlite3.Connection, message_id: int) -> None:
    left = conn.execute(
        "SELECT 1 FROM queue_recipients WHERE message_id = ? AND state != 'sent' LIMIT 1",
        (message_id,),
    ).fetchone()
    if left is None:
        conn.execute("DELETE FROM queue_recipients WHERE message_id = ?", (message_id,))
        conn.execute("DELETE FROM queue_messages WHERE id = ?", (message_id,))


def next_due(store: SqlAccess) -> float | None:
    """The earliest `next_attempt` of a queued recipient (uses the partial index queue_due)."""
    row = (
        store.connection()
        .execute("SELECT MIN(next_attempt) FROM queue_recipients WHERE state = 'queued'")
        .fetchone()
    )
    return None if row is None or row[0] is None else float(row[0])


def flush(store: SqlAccess) -> int:
    """`cgpop queue flush`: every queued recipient is due now. Returns how many."""
    with store.transaction() as conn:
        cur = conn.execute("UPDATE queue_recipients SET next_attempt = 0 WHERE state = 'queued'")
        return cur.rowcount


def remove(store: SqlAccess, message_id: int) -> bool:
    """`cgpop queue remove ID`: drop a message without a bounce. False when there is none.

    A recipient being sent at this moment may still be delivered; its bookkeeping then finds
    no row and changes nothing.
    """
    with store.transaction() as conn:
        conn.execute("DELETE FROM queue_recipients WHERE message_id = ?", (message_id,))
        cur = conn.execute("DELETE FROM queue_messages WHERE id = ?", (message_id,))
        return cur.rowcount > 0


def list_queue(store: SqlAccess) -> list[Entry]:
    conn = store.connection()
    recipients: dict[int, list[RecipientState]] = {}
    for message_id, *rest in conn.execute(
        "SELECT message_id, recipient, state, attempts, next_attempt, last_error"
        " FROM queue_recipients ORDER BY message_id, recipient"
    ):
        recipients.setdefault(message_id, []).append(RecipientState(*rest))
    return [
        Entry(id_, sender, account, size, created, tuple(recipients.get(id_, ())))
        for id_, sender, account, size, created in conn.execute(
            "SELECT id, sender, account, length(message), created FROM queue_messages ORDER BY id"
        )
    ]
