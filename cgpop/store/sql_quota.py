"""Quotas' administration in SQL both backends share (api.Quotas, issue 12): setting, reading,
listing and recounting limits and usage. What delivery, import and expunge do with quotas
inside their own transactions stays in the backends (cgpop/store/sqlite_quota.py, pg_quota.py):
there SQLite relies on its one writer and PostgreSQL on a lock order across nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cgpop.store.api import NotFound, Quota
from cgpop.store.sql_access import SqlAccess, SqlConn

# An account's quota row with its address (`recalc_quota`, `list_quotas`).
_ACCOUNT_QUOTA = (
    "SELECT a.name || '@' || d.name, q.storage_used, q.storage_limit, q.messages_used, "
    "q.messages_limit FROM account_quotas q JOIN accounts a ON a.id = q.account_id "
    "JOIN domains d ON d.id = a.domain_id"
)


def quota_limit(v: Any) -> int | None:
    """A limit column: None is no limit."""
    return None if v is None else int(v)


def quota_of(row: Sequence[Any]) -> Quota:
    """(storage used, storage limit, messages used, messages limit) as a Quota."""
    return Quota(int(row[0]), quota_limit(row[1]), int(row[2]), quota_limit(row[3]))


class SqlQuotas(SqlAccess):
    # The column of `messages` (as m.) that marks an expunged copy, which counts no more.
    _EXPUNGED: str

    if TYPE_CHECKING:

        def _quota_rows(self, conn: Any, account_ids: Sequence[int]) -> None:
            """Make sure these accounts have quota rows, and hold them until the transaction
            ends (what a delivery would hold: then the counts cannot change under us)."""

    def _ids(self, conn: SqlConn, domain: str, account: str | None) -> tuple[int, int]:
        """(domain id, account id or 0 for a domain quota); NotFound names what is missing."""
        did = self._domain_id(conn, domain)
        if account is None:
            return did, 0
        row = self._run(
            conn, "SELECT id FROM accounts WHERE domain_id = ? AND name = ?", (did, account.lower())
        ).fetchone()
        if row is None:
            raise NotFound(f"no such account: {account}@{domain}")
        return did, int(row[0])

    def set_quota(
        self, domain: str, account: str | None, storage: int | None, messages: int | None
    ) -> None:
        with self._tx() as conn:
            did, aid = self._ids(conn, domain, account)
            table, key, owner = (
                ("domain_quotas", "domain_id", did)
                if account is None
                else ("account_quotas", "account_id", aid)
            )
            self._run(
                conn,
                f"INSERT INTO {table}({key}, storage_limit, messages_limit) VALUES (?, ?, ?) "
                f"ON CONFLICT ({key}) DO UPDATE SET storage_limit = excluded.storage_limit, "
                "messages_limit = excluded.messages_limit",
                (owner, storage, messages),
            )

    def get_quota(self, domain: str, account: str | None) -> Quota:
        with self._reader() as conn:
            did, aid = self._ids(conn, domain, account)
            if account is not None:
                row = self._run(
                    conn,
                    "SELECT storage_used, storage_limit, messages_used, messages_limit "
                    "FROM account_quotas WHERE account_id = ?",
                    (aid,),
                ).fetchone()
                return quota_of(row) if row is not None else Quota(0, None, 0, None)
            row = self._run(
                conn,
                "SELECT coalesce(sum(q.storage_used), 0), "
                "(SELECT storage_limit FROM domain_quotas WHERE domain_id = ?), "
                "coalesce(sum(q.messages_used), 0), "
                "(SELECT messages_limit FROM domain_quotas WHERE domain_id = ?) "
                "FROM account_quotas q JOIN accounts a ON a.id = q.account_id "
                "WHERE a.domain_id = ?",
                (did, did, did),
            ).fetchone()
            return quota_of(row)

    def list_quotas(self, domain: str | None = None) -> list[tuple[str, Quota]]:
        sql = (
            f"{_ACCOUNT_QUOTA} WHERE (q.storage_limit IS NOT NULL OR q.messages_limit IS NOT NULL)"
        )
        args: tuple[str, ...] = ()
        if domain is not None:
            sql += " AND d.name = ?"
            args = (domain.lower(),)
        rows = self._rows(sql + ' ORDER BY d.name COLLATE "C", a.name COLLATE "C"', args)
        return [(str(r[0]), quota_of(r[1:])) for r in rows]

    def recalc_quota(
        self, domain: str | None = None, account: str | None = None
    ) -> list[tuple[str, Quota, Quota]]:
        with self._tx() as conn:
            where = ""
            args: tuple[int, ...] = ()
            if domain is not None:
                did, aid = self._ids(conn, domain, account)
                where = "WHERE a.id = ?" if account is not None else "WHERE a.domain_id = ?"
                args = (aid,) if account is not None else (did,)
            ids = [int(r[0]) for r in self._run(conn, f"SELECT a.id FROM accounts a {where}", args)]
            self._quota_rows(conn, ids)
            # Usage rebuilt from the copies not expunged.
            counted = self._run(
                conn,
                "SELECT a.id, coalesce(sum(m.size), 0), count(m.uid) FROM accounts a "
                "LEFT JOIN mailboxes b ON b.account_id = a.id "
                f"LEFT JOIN messages m ON m.mailbox_id = b.id AND {self._EXPUNGED} IS NULL "
                f"{where} GROUP BY a.id",
                args,
            ).fetchall()
            out: list[tuple[str, Quota, Quota]] = []
            for aid, storage, messages in counted:
                row = self._run(conn, f"{_ACCOUNT_QUOTA} WHERE q.account_id = ?", (aid,)).fetchone()
                before = quota_of(row[1:])
                if (before.storage_used, before.messages_used) == (int(storage), int(messages)):
                    continue
                self._run(
                    conn,
                    "UPDATE account_quotas SET storage_used = ?, messages_used = ? "
                    "WHERE account_id = ?",
                    (storage, messages, aid),
                )
                after = Quota(
                    int(storage), before.storage_limit, int(messages), before.messages_limit
                )
                out.append((str(row[0]), before, after))
            return sorted(out, key=lambda item: item[0])
