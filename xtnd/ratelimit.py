"""Per-account submission rate limit: messages and recipients in the last hour (issue 5).

A sliding window over the `submissions` table (schema 5), one row per accepted submission.
`xtnd.submit` takes the limit with `check` and `record` in one transaction on the server's single
writer thread *before* anything is stored or queued, so parallel sessions of one account cannot
together deliver more than the limit (issue 10, defect 3); if the submission then fails, it gives
the slot back with `release`. It also calls `check` (which only reads) beforehand on a reader, so
a submission already over the limit costs no writer transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

__all__ = ["WINDOW", "Limits", "check", "record", "release"]

WINDOW = 3600.0  # "per hour"


@dataclass(frozen=True, slots=True)
class Limits:
    messages_per_hour: int
    recipients_per_hour: int


def check(
    conn: sqlite3.Connection, account: str, recipients: int, now: float, limits: Limits
) -> str | None:
    """None when `account` may submit a message to `recipients` more; else the reason. Reads
    only."""
    messages, sent_to = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(recipients), 0) FROM submissions"
        " WHERE account = ? AND at > ?",
        (account, now - WINDOW),
    ).fetchone()
    if messages + 1 > limits.messages_per_hour:
        return f"rate limit: at most {limits.messages_per_hour} messages per hour"
    if sent_to + recipients > limits.recipients_per_hour:
        return f"rate limit: at most {limits.recipients_per_hour} recipients per hour"
    return None


def record(conn: sqlite3.Connection, account: str, recipients: int, now: float) -> int:
    """Count one submission; returns its slot for `release`. Call inside a transaction."""
    # Rows older than the window never count again; dropping them keeps the table small.
    conn.execute("DELETE FROM submissions WHERE account = ? AND at <= ?", (account, now - WINDOW))
    cur = conn.execute(
        "INSERT INTO submissions (account, at, recipients) VALUES (?, ?, ?)",
        (account, now, recipients),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def release(conn: sqlite3.Connection, slot: int) -> None:
    """Give back a slot taken by `record` for a submission that was not sent."""
    conn.execute("DELETE FROM submissions WHERE rowid = ?", (slot,))
