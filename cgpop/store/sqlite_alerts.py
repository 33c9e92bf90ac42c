"""Alerts in the SQLite backend (schema migration 4): api.Alerts."""

from __future__ import annotations

import time
from typing import Any

from cgpop.store.api import ALERT_SCOPES, Alert
from cgpop.store.sqlite_base import SqliteDatabase

# Oldest first; an account sees its own alerts, its domain's and the server's.
_PENDING = """
    SELECT id, scope, target, text, created FROM alerts AS a
    WHERE ((a.scope = 'account' AND a.target = ?) OR (a.scope = 'domain' AND a.target = ?)
           OR a.scope = 'server')
      AND NOT EXISTS (SELECT 1 FROM alerts_delivered AS d
                      WHERE d.alert_id = a.id AND d.account = ?)
    ORDER BY a.created, a.id LIMIT 1
"""


def _alert(r: tuple[Any, ...]) -> Alert:
    """An `alerts` row (id, scope, target, text, created[, delivered count])."""
    delivered = int(r[5]) if len(r) > 5 else 0
    return Alert(int(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4]), delivered)


def _args(account: str) -> tuple[str, str, str]:
    account = account.lower()
    return account, account.rpartition("@")[2], account


class SqliteAlerts(SqliteDatabase):
    def add_alert(self, scope: str, target: str, text: str) -> int:
        if scope not in ALERT_SCOPES:
            raise ValueError(f"unknown alert scope {scope!r}")
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO alerts (scope, target, text, created) VALUES (?, ?, ?, ?)",
                (scope, target.lower() if scope != "server" else "", text, time.time()),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def list_alerts(self) -> list[Alert]:
        rows = self._conn().execute(
            "SELECT a.id, a.scope, a.target, a.text, a.created, count(d.alert_id) FROM alerts a "
            "LEFT JOIN alerts_delivered d ON d.alert_id = a.id GROUP BY a.id ORDER BY a.id"
        )
        return [_alert(r) for r in rows]

    def remove_alert(self, alert_id: int) -> bool:
        with self._tx() as conn:
            conn.execute("DELETE FROM alerts_delivered WHERE alert_id = ?", (alert_id,))
            return conn.execute("DELETE FROM alerts WHERE id = ?", (alert_id,)).rowcount > 0

    def pending_alert(self, account: str) -> Alert | None:
        r = self._conn().execute(_PENDING, _args(account)).fetchone()
        return None if r is None else _alert(r)

    def take_alert(self, account: str) -> Alert | None:
        with self._tx() as conn:
            r = conn.execute(_PENDING, _args(account)).fetchone()
            if r is None:
                return None
            conn.execute(
                "INSERT INTO alerts_delivered (alert_id, account, delivered_at) VALUES (?, ?, ?)",
                (r[0], account.lower(), time.time()),
            )
            return _alert(r)
