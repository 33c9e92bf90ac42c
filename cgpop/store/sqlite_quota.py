"""Quotas in the SQLite backend (issue 12, schema migration "quota"): api.Quotas, and the
hooks delivery, import and expunge call inside their own transactions.

Every writer holds SQLite's one write lock (BEGIN IMMEDIATE), so reading usage, deciding and
writing it back in one transaction cannot race another delivery.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from cgpop.store.api import NotFound, OverQuota, Quota
from cgpop.store.quota_rules import Root, admit, warning
from cgpop.store.sqlite_base import SqliteDatabase

_OWNERS = (
    "SELECT m.id, a.id, a.name || '@' || d.name, d.id, d.name FROM mailboxes m "
    "JOIN accounts a ON a.id = m.account_id JOIN domains d ON d.id = a.domain_id "
    "WHERE m.id IN ({})"
)
# Usage rebuilt from the copies not expunged, per account (`quota recalc`, the migration).
_COUNTED = (
    "SELECT a.id, coalesce(sum(m.size), 0), count(m.uid) FROM accounts a "
    "LEFT JOIN mailboxes b ON b.account_id = a.id "
    "LEFT JOIN messages m ON m.mailbox_id = b.id AND m.expunged_at IS NULL "
)


def _opt(v: object) -> int | None:
    return None if v is None else int(str(v))


def _quota(row: Sequence[object]) -> Quota:
    """(storage used, storage limit, messages used, messages limit) as a Quota."""
    return Quota(int(str(row[0])), _opt(row[1]), int(str(row[2])), _opt(row[3]))


class SqliteQuotas(SqliteDatabase):
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
                    address, int(row[0]), int(row[1]), _opt(row[2]), _opt(row[3]), aid
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
        return Root(name, int(used[0]), int(used[1]), _opt(row[0]), _opt(row[1]))

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

    # --- api.Quotas ---
    def _ids(self, conn: sqlite3.Connection, domain: str, account: str | None) -> tuple[int, int]:
        """(domain id, account id or 0 for a domain quota); NotFound names what is missing."""
        did = self._domain_id(conn, domain)
        if account is None:
            return did, 0
        row = conn.execute(
            "SELECT id FROM accounts WHERE domain_id = ? AND name = ?", (did, account.lower())
        ).fetchone()
        if row is None:
            raise NotFound(f"no such account: {account}@{domain}")
        return did, int(row[0])

    def set_quota(
        self, domain: str, account: str | None, storage: int | None, messages: int | None
    ) -> None:
        with self._tx() as conn:
            did, aid = self._ids(conn, domain, account)
            if account is None:
                conn.execute(
                    "INSERT INTO domain_quotas(domain_id, storage_limit, messages_limit) "
                    "VALUES (?, ?, ?) ON CONFLICT(domain_id) DO UPDATE SET "
                    "storage_limit = excluded.storage_limit, "
                    "messages_limit = excluded.messages_limit",
                    (did, storage, messages),
                )
            else:
                conn.execute("INSERT OR IGNORE INTO account_quotas(account_id) VALUES (?)", (aid,))
                conn.execute(
                    "UPDATE account_quotas SET storage_limit = ?, messages_limit = ? "
                    "WHERE account_id = ?",
                    (storage, messages, aid),
                )

    def get_quota(self, domain: str, account: str | None) -> Quota:
        conn = self._conn()
        did, aid = self._ids(conn, domain, account)
        if account is not None:
            row = conn.execute(
                "SELECT storage_used, storage_limit, messages_used, messages_limit "
                "FROM account_quotas WHERE account_id = ?",
                (aid,),
            ).fetchone()
            return _quota(row) if row is not None else Quota(0, None, 0, None)
        row = conn.execute(
            "SELECT coalesce(sum(q.storage_used), 0), l.storage_limit, "
            "coalesce(sum(q.messages_used), 0), l.messages_limit FROM domains d "
            "LEFT JOIN domain_quotas l ON l.domain_id = d.id "
            "LEFT JOIN accounts a ON a.domain_id = d.id "
            "LEFT JOIN account_quotas q ON q.account_id = a.id WHERE d.id = ? GROUP BY d.id",
            (did,),
        ).fetchone()
        return _quota(row)

    def list_quotas(self, domain: str | None = None) -> list[tuple[str, Quota]]:
        sql = (
            "SELECT a.name || '@' || d.name, q.storage_used, q.storage_limit, q.messages_used, "
            "q.messages_limit FROM account_quotas q JOIN accounts a ON a.id = q.account_id "
            "JOIN domains d ON d.id = a.domain_id "
            "WHERE (q.storage_limit IS NOT NULL OR q.messages_limit IS NOT NULL)"
        )
        args: tuple[str, ...] = ()
        if domain is not None:
            sql += " AND d.name = ?"
            args = (domain.lower(),)
        rows = self._conn().execute(sql + " ORDER BY d.name, a.name", args).fetchall()
        return [(str(r[0]), _quota(r[1:])) for r in rows]

    def recalc_quota(
        self, domain: str | None = None, account: str | None = None
    ) -> list[tuple[str, Quota, Quota]]:
        with self._tx() as conn:
            sql = _COUNTED
            args: tuple[int, ...] = ()
            if domain is not None:
                did, aid = self._ids(conn, domain, account)
                sql += "WHERE a.id = ?" if account is not None else "WHERE a.domain_id = ?"
                args = (aid,) if account is not None else (did,)
            counted = conn.execute(sql + " GROUP BY a.id", args).fetchall()
            out: list[tuple[str, Quota, Quota]] = []
            for aid, storage, messages in counted:
                conn.execute("INSERT OR IGNORE INTO account_quotas(account_id) VALUES (?)", (aid,))
                row = conn.execute(
                    "SELECT a.name || '@' || d.name, q.storage_used, q.storage_limit, "
                    "q.messages_used, q.messages_limit FROM account_quotas q "
                    "JOIN accounts a ON a.id = q.account_id JOIN domains d ON d.id = a.domain_id "
                    "WHERE q.account_id = ?",
                    (aid,),
                ).fetchone()
                before = _quota(row[1:])
                if (before.storage_used, before.messages_used) == (storage, messages):
                    continue
                conn.execute(
                    "UPDATE account_quotas SET storage_used = ?, messages_used = ? "
                    "WHERE account_id = ?",
                    (storage, messages, aid),
                )
                after = Quota(
                    int(storage), before.storage_limit, int(messages), before.messages_limit
                )
                out.append((str(row[0]), before, after))
            return sorted(out, key=lambda item: item[0])
