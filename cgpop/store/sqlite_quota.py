"""Quotas in the SQLite backend (issue 12, schema migration "quota"): api.Quotas, and the
hooks delivery, import and expunge call inside their own transactions.

Every writer holds SQLite's one write lock (BEGIN IMMEDIATE), so reading usage, deciding and
writing it back in one transaction cannot race another delivery.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from cgpop.store.api import NotFound, OverQuota
from cgpop.store.quota_rules import Root, admit, warning
from cgpop.store.sql_quota import SqlQuotas, quota_limit
from cgpop.store.sqlite_base import SqliteDatabase

_OWNERS = (
    "SELECT m.id, a.id, a.name || '@' || d.name, d.id, d.name FROM mailboxes m "
    "JOIN accounts a ON a.id = m.account_id JOIN domains d ON d.id = a.domain_id "
    "WHERE m.id IN ({})"
)


class SqliteQuotas(SqliteDatabase, SqlQuotas):
    _EXPUNGED = "m.expunged_at"

    # --- hooks for the delivery, import and expunge transactions ---
    def _quota_admit(
        self,
        conn: sqlite3.Connection,
        wanted: Sequence[tuple[int, int] | None],
        warn_percent: int | None,
    ) -> list[OverQuota | None]:
        """Per copy (mailbox id, size as POP reports it), or None for one not to store:
        None when it fits, else OverQuota. Usage of the copies that fit is written and the
        warnings they raise are queued, in `conn`'s transaction."""
        boxes = sorted({w[0] for w in wanted if w is not None})
        if not boxes:
            return [None] * len(wanted)
        owners = {
            int(r[0]): (int(r[1]), str(r[2]), int(r[3]), str(r[4]))
            for r in conn.execute(_OWNERS.format(",".join("?" * len(boxes))), boxes)
        }
        if len(owners) != len(boxes):
            raise NotFound("the mailbox was removed during delivery")
        accounts: dict[int, Root] = {}
        domains: dict[int, Root | None] = {}
        for aid, address, did, dname in owners.values():
            if aid not in accounts:
                conn.execute("INSERT OR IGNORE INTO account_quotas(account_id) VALUES (?)", (aid,))
                row = conn.execute(
                    "SELECT storage_used, messages_used, storage_limit, messages_limit "
                    "FROM account_quotas WHERE account_id = ?",
                    (aid,),
                ).fetchone()
                accounts[aid] = Root(
                    address, int(row[0]), int(row[1]), quota_limit(row[2]), quota_limit(row[3]), aid
                )
            if did not in domains:
                domains[did] = self._domain_root(conn, did, dname)
        before = {aid: (r.storage, r.messages) for aid, r in accounts.items()}
        refused = admit(
            [
                None if w is None else (accounts[owners[w[0]][0]], domains[owners[w[0]][2]], w[1])
                for w in wanted
            ]
        )
        now = time.time()
        for aid, root in accounts.items():
            if (root.storage, root.messages) == before[aid]:
                continue
            conn.execute(
                "UPDATE account_quotas SET storage_used = ?, messages_used = ? "
                "WHERE account_id = ?",
                (root.storage, root.messages, aid),
            )
            text = warning(before[aid], root, warn_percent)
            if text is not None:
                conn.execute(
                    "INSERT INTO alerts (scope, target, text, created) VALUES ('account', ?, ?, ?)",
                    (root.name, text, now),
                )
        return refused

    @staticmethod
    def _domain_root(conn: sqlite3.Connection, did: int, name: str) -> Root | None:
        """The domain's root when it has a limit (usage summed over its accounts), else None."""
        row = conn.execute(
            "SELECT storage_limit, messages_limit FROM domain_quotas WHERE domain_id = ?", (did,)
        ).fetchone()
        if row is None or (row[0] is None and row[1] is None):
            return None
        used = conn.execute(
            "SELECT coalesce(sum(q.storage_used), 0), coalesce(sum(q.messages_used), 0) "
            "FROM account_quotas q JOIN accounts a ON a.id = q.account_id WHERE a.domain_id = ?",
            (did,),
        ).fetchone()
        return Root(name, int(used[0]), int(used[1]), quota_limit(row[0]), quota_limit(row[1]))

    @staticmethod
    def _quota_move(conn: sqlite3.Connection, mailbox_id: int, sizes: Sequence[int]) -> None:
        """Copies of `mailbox_id` stored (positive sizes) or expunged (negative): their
        octets and count move the owning account's usage."""
        if not sizes:
            return
        sign = -1 if sizes[0] < 0 else 1
        conn.execute(
            "INSERT INTO account_quotas(account_id, storage_used, messages_used) "
            "SELECT account_id, ?, ? FROM mailboxes WHERE id = ? "
            "ON CONFLICT(account_id) DO UPDATE SET "
            "storage_used = storage_used + excluded.storage_used, "
            "messages_used = messages_used + excluded.messages_used",
            (sum(sizes), sign * len(sizes), mailbox_id),
        )

    # --- api.Quotas' hook (cgpop/store/sql_quota.py) ---
    def _quota_rows(self, conn: sqlite3.Connection, account_ids: Sequence[int]) -> None:
        # The transaction holds SQLite's one write lock: no row needs a lock of its own.
        conn.executemany(
            "INSERT OR IGNORE INTO account_quotas(account_id) VALUES (?)",
            [(aid,) for aid in account_ids],
        )
