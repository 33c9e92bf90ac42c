"""Alerts (CommuniGate; api.Alerts) in SQL both backends share: listing, removing and the
oldest alert an account has not seen. Posting and taking one stay in the backends: PostgreSQL
stamps them with the database's clock and takes an alert in one statement that a login on
another node may race; SQLite's one writer needs no race."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cgpop.store.api import Alert
from cgpop.store.sql_access import SqlAccess

# Oldest first; an account sees its own alerts, its domain's and the server's. Its arguments
# are `pending_args(account)`.
PENDING_ALERT = (
    "SELECT id, scope, target, text, created FROM alerts a "
    "WHERE ((a.scope = 'account' AND a.target = ?) OR (a.scope = 'domain' AND a.target = ?) "
    "OR a.scope = 'server') AND NOT EXISTS (SELECT 1 FROM alerts_delivered d "
    "WHERE d.alert_id = a.id AND d.account = ?) ORDER BY a.created, a.id LIMIT 1"
)


def pending_args(account: str) -> tuple[str, str, str]:
    account = account.lower()
    return account, account.rpartition("@")[2], account


def alert_of(r: Sequence[Any]) -> Alert:
    """An `alerts` row (id, scope, target, text, created[, delivered count])."""
    delivered = int(r[5]) if len(r) > 5 else 0
    return Alert(int(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4]), delivered)


class SqlAlerts(SqlAccess):
    def list_alerts(self) -> list[Alert]:
        """Every alert with the number of accounts it was shown to, in one query."""
        rows = self._rows(
            "SELECT a.id, a.scope, a.target, a.text, a.created, count(d.alert_id) "
            "FROM alerts a LEFT JOIN alerts_delivered d ON d.alert_id = a.id "
            "GROUP BY a.id ORDER BY a.id"
        )
        return [alert_of(r) for r in rows]

    def remove_alert(self, alert_id: int) -> bool:
        """Delete an alert and its delivery records (cascade); False when there was none."""
        return (
            self._write_row("DELETE FROM alerts WHERE id = ? RETURNING 1", (alert_id,)) is not None
        )

    def pending_alert(self, account: str) -> Alert | None:
        """The oldest alert not yet shown to `account` ("name@domain"), not marked."""
        row = self._row(PENDING_ALERT, pending_args(account))
        return None if row is None else alert_of(row)
