"""CommuniGate-style alerts: texts posted for one account, a domain or the whole server, each
shown once to every account it concerns as the error of a login with correct credentials.

Blocking SQLite work on the tables of schema migration 4; the server runs it off the event loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from cgpop.store.api import SqlAccess

SCOPES = ("account", "domain", "server")
# The text goes out as `-ERR [SYS/TEMP] <text>\r\n`: RFC 2449 section 4 bounds a response
# line to 512 octets including CRLF, and the prefix takes 16.
MAX_TEXT_OCTETS = 512 - len("-ERR [SYS/TEMP] ") - 2


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    scope: str  # "account" | "domain" | "server"
    target: str  # "name@domain", "domain", or "" for the server
    text: str
    created: float
    delivered: int = 0  # accounts it was shown to (filled by list_alerts)


def _alert(r: Any) -> Alert:
    """An `alerts` row (id, scope, target, text, created[, delivered count])."""
    delivered = int(r[5]) if len(r) > 5 else 0
    return Alert(int(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4]), delivered)


def check_text(text: str) -> str:
    """The text as it will be sent, or ValueError: one line, not empty, bounded."""
    text = text.strip()
    if not text:
        raise ValueError("alert text is empty")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise ValueError("alert text must be one line without control characters")
    if len(text.encode("utf-8")) > MAX_TEXT_OCTETS:
        raise ValueError(f"alert text longer than {MAX_TEXT_OCTETS} octets (UTF-8)")
    return text


def add(store: SqlAccess, scope: str, target: str, text: str) -> int:
    """Post an alert; returns its id."""
    if scope not in SCOPES:
        raise ValueError(f"unknown alert scope {scope!r}")
    text = check_text(text)
    with store.transaction() as conn:
        cur = conn.execute(
            "INSERT INTO alerts (scope, target, text, created) VALUES (?, ?, ?, ?)",
            (scope, target.lower() if scope != "server" else "", text, time.time()),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid


def list_alerts(store: SqlAccess) -> list[Alert]:
    """Every alert with the number of accounts it was shown to, in one query."""
    rows = store.connection().execute(
        "SELECT a.id, a.scope, a.target, a.text, a.created, count(d.alert_id) FROM alerts a "
        "LEFT JOIN alerts_delivered d ON d.alert_id = a.id GROUP BY a.id ORDER BY a.id"
    )
    return [_alert(r) for r in rows]


def remove(store: SqlAccess, alert_id: int) -> bool:
    """Delete an alert and its delivery records; False when there was no such alert."""
    with store.transaction() as conn:
        conn.execute("DELETE FROM alerts_delivered WHERE alert_id = ?", (alert_id,))
        return conn.execute("DELETE FROM alerts WHERE id = ?", (alert_id,)).rowcount > 0


# Oldest first; an account sees its own alerts, its domain's and the server's.
_PENDING = """
    SELECT id, scope, target, text, created FROM alerts AS a
    WHERE ((a.scope = 'account' AND a.target = ?) OR (a.scope = 'domain' AND a.target = ?)
           OR a.scope = 'server')
      AND NOT EXISTS (SELECT 1 FROM alerts_delivered AS d
                      WHERE d.alert_id = a.id AND d.account = ?)
    ORDER BY a.created, a.id LIMIT 1
"""


def _args(account: str) -> tuple[str, str, str]:
    account = account.lower()
    return account, account.rpartition("@")[2], account


def pending(store: SqlAccess, account: str) -> Alert | None:
    """The oldest alert not yet shown to `account` ("name@domain"), without marking it."""
    r = store.connection().execute(_PENDING, _args(account)).fetchone()
    return None if r is None else _alert(r)


def take(store: SqlAccess, account: str) -> Alert | None:
    """The oldest alert not yet shown to `account`, marked delivered in the same transaction
    (two sessions logging in at once get different alerts, never the same one twice)."""
    with store.transaction() as conn:
        r = conn.execute(_PENDING, _args(account)).fetchone()
        if r is None:
            return None
        conn.execute(
            "INSERT INTO alerts_delivered (alert_id, account, delivered_at) VALUES (?, ?, ?)",
            (r[0], account.lower(), time.time()),
        )
        return _alert(r)
