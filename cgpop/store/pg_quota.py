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

from cgpop.store.api import NotFound, OverQuota
from cgpop.store.pg_access import PgAccess
from cgpop.store.pg_base import NOW, Conn, PgDatabase
from cgpop.store.quota_rules import Root, admit, warning
from cgpop.store.sql_quota import SqlQuotas, quota_limit


class PgQuotas(PgDatabase, PgAccess, SqlQuotas):
    _EXPUNGED = "m.expunged_xid"

    # --- hooks for the delivery, import and expunge transactions ---
    def _quota_lock(
        self, conn: Conn, mailbox_ids: Sequence[int]
    ) -> dict[int, tuple[Root, Root | None]]:
        """Lock the quota rows of these mailboxes' accounts and limited domains (domains, then
        accounts, each in id order: the one lock order of every transaction) and read them:
        per mailbox id, its account's root and its domain's (None: no domain limit)."""
        boxes = sorted(set(mailbox_ids))
        owners = {
            int(r[0]): (int(r[1]), str(r[2]), int(r[3]), str(r[4]))
            for r in conn.execute(
                "SELECT m.id, a.id, a.name || '@' || d.name, d.id, d.name FROM mailboxes m "
                "JOIN accounts a ON a.id = m.account_id JOIN domains d ON d.id = a.domain_id "
                "WHERE m.id = ANY(%s)",
                (boxes,),
            )
        }
        if len(owners) != len(boxes):
            raise NotFound("the mailbox was removed during delivery")
        dids = sorted({o[2] for o in owners.values()})
        names = {o[2]: o[3] for o in owners.values()}
        limits = conn.execute(
            "SELECT domain_id, storage_limit, messages_limit FROM domain_quotas "
            "WHERE domain_id = ANY(%s) ORDER BY domain_id FOR UPDATE",
            (dids,),
        ).fetchall()
        domains: dict[int, Root] = {}
        limited = [int(r[0]) for r in limits if r[1] is not None or r[2] is not None]
        used = {
            int(r[0]): (int(r[1]), int(r[2]))
            for r in conn.execute(
                "SELECT a.domain_id, coalesce(sum(q.storage_used), 0), "
                "coalesce(sum(q.messages_used), 0) FROM account_quotas q "
                "JOIN accounts a ON a.id = q.account_id WHERE a.domain_id = ANY(%s) "
                "GROUP BY a.domain_id",
                (limited,),
            )
        }
        for did, storage_limit, messages_limit in limits:
            if storage_limit is None and messages_limit is None:
                continue
            s, m = used.get(int(did), (0, 0))
            domains[int(did)] = Root(
                names[int(did)], s, m, quota_limit(storage_limit), quota_limit(messages_limit)
            )
        aids = sorted({o[0] for o in owners.values()})
        conn.execute(
            "INSERT INTO account_quotas(account_id) SELECT unnest(%s::bigint[]) ORDER BY 1 "
            "ON CONFLICT DO NOTHING",
            (aids,),
        )
        addresses = {o[0]: o[1] for o in owners.values()}
        accounts = {
            int(r[0]): Root(
                addresses[int(r[0])],
                int(r[1]),
                int(r[2]),
                quota_limit(r[3]),
                quota_limit(r[4]),
                int(r[0]),
            )
            for r in conn.execute(
                "SELECT account_id, storage_used, messages_used, storage_limit, messages_limit "
                "FROM account_quotas WHERE account_id = ANY(%s) ORDER BY account_id FOR UPDATE",
                (aids,),
            )
        }
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
        warnings they raise are queued, in `conn`'s transaction (rows from `_quota_lock`)."""
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

    # --- api.Quotas' hook (cgpop/store/sql_quota.py) ---
    def _quota_rows(self, conn: Conn, account_ids: Sequence[int]) -> None:
        ids = list(account_ids)
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
