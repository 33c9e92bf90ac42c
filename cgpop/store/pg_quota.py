"""Quotas in the PostgreSQL backend (issue 12, schema migration "quota"): api.Quotas, and the
hooks delivery, import and expunge call inside their own transactions.

Concurrent deliveries on several nodes: a delivery first locks the `domain_quotas` rows of
its domains that have a limit, then its accounts' `account_quotas` rows, each kind in id
order and both before any other row it writes (duplicate records, mailbox counters), so two
deliveries queue behind each other instead of deadlocking, and the second one decides on the
usage the first one committed: together they never pass a limit. An expunge locks only its
account's row (a usage that drops cannot pass a limit), also before the copies it marks. A
domain without a limit is never locked, so unlimited domains deliver in parallel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from cgpop.store.api import NotFound, OverQuota, Quota
from cgpop.store.pg_base import NOW, Conn, PgDatabase
from cgpop.store.quota_rules import Root, admit, warning

_COUNTED = (
    "SELECT a.id, coalesce(sum(m.size), 0), count(m.uid) FROM accounts a "
    "LEFT JOIN mailboxes b ON b.account_id = a.id "
    "LEFT JOIN messages m ON m.mailbox_id = b.id AND m.expunged_xid IS NULL "
)
Cursor = psycopg.Cursor[tuple[Any, ...]]


def _opt(v: Any) -> int | None:
    return None if v is None else int(v)


def _quota(row: Sequence[Any]) -> Quota:
    """(storage used, storage limit, messages used, messages limit) as a Quota."""
    return Quota(int(row[0]), _opt(row[1]), int(row[2]), _opt(row[3]))


class PgQuotas(PgDatabase):
    # --- hooks for the delivery, import and expunge transactions ---
    @staticmethod
    def _quota_lock_send(conn: Conn, boxes: Sequence[int]) -> list[Cursor]:
        """Queue the locks and reads of these mailboxes' accounts' and limited domains' quota
        rows (domains, then accounts, each in id order: the one lock order of every
        transaction). Each statement finds its rows from the mailbox ids alone, so in a
        pipeline they all go in one round trip (issue 11); `_quota_roots` reads the answers.
        A statement's snapshot is taken after the previous one's locks: the sums and rows
        read are those the holders of the locks committed."""
        boxes = sorted(set(boxes))
        of_boxes = "SELECT account_id FROM mailboxes WHERE id = ANY(%(b)s)"
        domains_of = f"SELECT domain_id FROM accounts WHERE id IN ({of_boxes})"
        limited = (
            f"SELECT domain_id FROM domain_quotas WHERE domain_id IN ({domains_of}) "
            "AND (storage_limit IS NOT NULL OR messages_limit IS NOT NULL)"
        )
        args = {"b": boxes}
        return [
            conn.execute(
                "SELECT m.id, a.id, a.name || '@' || d.name, d.id, d.name FROM mailboxes m "
                "JOIN accounts a ON a.id = m.account_id JOIN domains d ON d.id = a.domain_id "
                "WHERE m.id = ANY(%(b)s)",
                args,
            ),
            conn.execute(
                "SELECT domain_id, storage_limit, messages_limit FROM domain_quotas "
                f"WHERE domain_id IN ({domains_of}) ORDER BY domain_id FOR UPDATE",
                args,
            ),
            conn.execute(
                "SELECT a.domain_id, coalesce(sum(q.storage_used), 0), "
                "coalesce(sum(q.messages_used), 0) FROM account_quotas q "
                f"JOIN accounts a ON a.id = q.account_id WHERE a.domain_id IN ({limited}) "
                "GROUP BY a.domain_id",
                args,
            ),
            conn.execute(
                f"INSERT INTO account_quotas(account_id) SELECT DISTINCT account_id "
                f"FROM ({of_boxes}) o ORDER BY 1 ON CONFLICT DO NOTHING",
                args,
            ),
            conn.execute(
                "SELECT account_id, storage_used, messages_used, storage_limit, messages_limit "
                f"FROM account_quotas WHERE account_id IN ({of_boxes}) "
                "ORDER BY account_id FOR UPDATE",
                args,
            ),
        ]

    @staticmethod
    def _quota_roots(
        boxes: Sequence[int], sent: Sequence[Cursor]
    ) -> dict[int, tuple[Root, Root | None]]:
        """The answers of `_quota_lock_send`: per mailbox id, its account's root and its
        domain's (None: no domain limit)."""
        owners_cur, limits_cur, used_cur, _, accounts_cur = sent
        owners = {
            int(r[0]): (int(r[1]), str(r[2]), int(r[3]), str(r[4])) for r in owners_cur.fetchall()
        }
        if len(owners) != len(set(boxes)):
            raise NotFound("the mailbox was removed during delivery")
        names = {o[2]: o[3] for o in owners.values()}
        used = {int(r[0]): (int(r[1]), int(r[2])) for r in used_cur.fetchall()}
        domains: dict[int, Root] = {}
        for did, storage_limit, messages_limit in limits_cur.fetchall():
            if storage_limit is None and messages_limit is None:
                continue
            s, m = used.get(int(did), (0, 0))
            domains[int(did)] = Root(
                names[int(did)], s, m, _opt(storage_limit), _opt(messages_limit)
            )
        addresses = {o[0]: o[1] for o in owners.values()}
        accounts = {
            int(r[0]): Root(
                addresses[int(r[0])], int(r[1]), int(r[2]), _opt(r[3]), _opt(r[4]), int(r[0])
            )
            for r in accounts_cur.fetchall()
        }
        if len(accounts) != len(addresses):
            raise NotFound("the account was removed during delivery")
        return {mid: (accounts[o[0]], domains.get(o[2])) for mid, o in owners.items()}

    def _quota_admit(
        self,
        conn: Conn,
        roots: dict[int, tuple[Root, Root | None]],
        wanted: Sequence[tuple[int, int] | None],
        warn_percent: int | None,
    ) -> list[OverQuota | None]:
        """Per copy (mailbox id, size as POP reports it), or None for one not to store:
        None when it fits, else OverQuota. Usage of the copies that fit is written and the
        warnings they raise are queued, in `conn`'s transaction (rows from `_quota_roots`)."""
        accounts = {a.id: a for a, _ in roots.values()}
        before = {key: (a.storage, a.messages) for key, a in accounts.items()}
        refused = admit([None if w is None else (*roots[w[0]], w[1]) for w in wanted])
        for key, root in accounts.items():
            if (root.storage, root.messages) == before[key]:
                continue
            conn.execute(
                "UPDATE account_quotas SET storage_used = %s, messages_used = %s "
                "WHERE account_id = %s",
                (root.storage, root.messages, key),
            )
            text = warning(before[key], root, warn_percent)
            if text is not None:
                conn.execute(
                    "INSERT INTO alerts(scope, target, text, created) "
                    f"VALUES ('account', %s, %s, {NOW})",
                    (root.name, text),
                )
        return refused

    @staticmethod
    def _quota_lock_box(conn: Conn, mailbox_id: int) -> None:
        """Before an expunge marks copies: lock the account's quota row (the lock order)."""
        conn.execute(
            "SELECT 1 FROM account_quotas WHERE account_id = "
            "(SELECT account_id FROM mailboxes WHERE id = %s) FOR UPDATE",
            (mailbox_id,),
        )

    @staticmethod
    def _quota_move(conn: Conn, mailbox_id: int, storage: int, count: int) -> None:
        """Copies of `mailbox_id` stored (positive) or expunged (negative) move its account's
        usage."""
        if not count:
            return
        conn.execute(
            "INSERT INTO account_quotas(account_id, storage_used, messages_used) "
            "SELECT account_id, %s, %s FROM mailboxes WHERE id = %s "
            "ON CONFLICT (account_id) DO UPDATE SET "
            "storage_used = account_quotas.storage_used + excluded.storage_used, "
            "messages_used = account_quotas.messages_used + excluded.messages_used",
            (storage, count, mailbox_id),
        )

    # --- api.Quotas ---
    def _ids(self, conn: Conn, domain: str, account: str | None) -> tuple[int, int]:
        """(domain id, account id or 0 for a domain quota); NotFound names what is missing."""
        did = self._domain_id(conn, domain)
        if account is None:
            return did, 0
        row = conn.execute(
            "SELECT id FROM accounts WHERE domain_id = %s AND name = %s", (did, account.lower())
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
                    "VALUES (%s, %s, %s) ON CONFLICT (domain_id) DO UPDATE SET "
                    "storage_limit = excluded.storage_limit, "
                    "messages_limit = excluded.messages_limit",
                    (did, storage, messages),
                )
            else:
                conn.execute(
                    "INSERT INTO account_quotas(account_id, storage_limit, messages_limit) "
                    "VALUES (%s, %s, %s) ON CONFLICT (account_id) DO UPDATE SET "
                    "storage_limit = excluded.storage_limit, "
                    "messages_limit = excluded.messages_limit",
                    (aid, storage, messages),
                )

    def get_quota(self, domain: str, account: str | None) -> Quota:
        with self._conn() as conn:
            did, aid = self._ids(conn, domain, account)
            if account is not None:
                row = conn.execute(
                    "SELECT storage_used, storage_limit, messages_used, messages_limit "
                    "FROM account_quotas WHERE account_id = %s",
                    (aid,),
                ).fetchone()
                return _quota(row) if row is not None else Quota(0, None, 0, None)
            row = conn.execute(
                "SELECT coalesce(sum(q.storage_used), 0), "
                "(SELECT storage_limit FROM domain_quotas WHERE domain_id = %s), "
                "coalesce(sum(q.messages_used), 0), "
                "(SELECT messages_limit FROM domain_quotas WHERE domain_id = %s) "
                "FROM account_quotas q JOIN accounts a ON a.id = q.account_id "
                "WHERE a.domain_id = %s",
                (did, did, did),
            ).fetchone()
            assert row is not None
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
            sql += " AND d.name = %s"
            args = (domain.lower(),)
        rows = self._all(sql + ' ORDER BY d.name COLLATE "C", a.name COLLATE "C"', args)
        return [(str(r[0]), _quota(r[1:])) for r in rows]

    def recalc_quota(
        self, domain: str | None = None, account: str | None = None
    ) -> list[tuple[str, Quota, Quota]]:
        with self._tx() as conn:
            where = ""
            args: tuple[int, ...] = ()
            if domain is not None:
                did, aid = self._ids(conn, domain, account)
                where = "WHERE a.id = %s" if account is not None else "WHERE a.domain_id = %s"
                args = (aid,) if account is not None else (did,)
            ids = [int(r[0]) for r in conn.execute(f"SELECT a.id FROM accounts a {where}", args)]
            conn.execute(
                "INSERT INTO account_quotas(account_id) SELECT unnest(%s::bigint[]) ORDER BY 1 "
                "ON CONFLICT DO NOTHING",
                (ids,),
            )
            # The lock order of deliveries; then the count cannot change under us.
            conn.execute(
                "SELECT 1 FROM account_quotas WHERE account_id = ANY(%s) "
                "ORDER BY account_id FOR UPDATE",
                (ids,),
            )
            counted = conn.execute(_COUNTED + where + " GROUP BY a.id", args).fetchall()
            out: list[tuple[str, Quota, Quota]] = []
            for aid, storage, messages in counted:
                row = conn.execute(
                    "SELECT a.name || '@' || d.name, q.storage_used, q.storage_limit, "
                    "q.messages_used, q.messages_limit FROM account_quotas q "
                    "JOIN accounts a ON a.id = q.account_id JOIN domains d ON d.id = a.domain_id "
                    "WHERE q.account_id = %s",
                    (aid,),
                ).fetchone()
                assert row is not None
                before = _quota(row[1:])
                if (before.storage_used, before.messages_used) == (int(storage), int(messages)):
                    continue
                conn.execute(
                    "UPDATE account_quotas SET storage_used = %s, messages_used = %s "
                    "WHERE account_id = %s",
                    (storage, messages, aid),
                )
                after = Quota(
                    int(storage), before.storage_limit, int(messages), before.messages_limit
                )
                out.append((str(row[0]), before, after))
            return sorted(out, key=lambda item: item[0])
