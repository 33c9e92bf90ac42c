"""Alerts in the SQLite backend (schema migration 4): api.Alerts."""

from __future__ import annotations

import time

from cgpop.store.api import ALERT_SCOPES, Alert
from cgpop.store.sql_alerts import PENDING_ALERT, SqlAlerts, alert_of, pending_args
from cgpop.store.sqlite_base import SqliteDatabase


class SqliteAlerts(SqliteDatabase, SqlAlerts):
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

    def take_alert(self, account: str) -> Alert | None:
        with self._tx() as conn:
            r = self._run(conn, PENDING_ALERT, pending_args(account)).fetchone()
            if r is None:
                return None
            conn.execute(
                "INSERT INTO alerts_delivered (alert_id, account, delivered_at) VALUES (?, ?, ?)",
                (r[0], account.lower(), time.time()),
            )
            return alert_of(r)
