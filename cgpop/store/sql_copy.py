"""`cgpop store copy` (issue 11) in SQL both backends share: the export's SELECT of each table
of COPY_TABLES (its columns in that order), and which tables of an import's target hold rows.
The loading itself differs (SQLite inserts; PostgreSQL COPYs and moves its sequences)."""

from __future__ import annotations

from cgpop.store.api import COPY_TABLES
from cgpop.store.sql_access import SqlConn


def export_queries(*, expunged: str, counters: str, body: str) -> dict[str, str]:
    """The export's SELECT per table. `expunged`: the column that marks an expunged copy
    (`m.` its table); `counters`: the SELECT of the ("uidvalidity", last value) row; `body`:
    what follows `b.id, b.size` in the bodies' SELECT (the octets, as the backend keeps them)."""
    live = f"{expunged} IS NULL AND m.mailbox_id IN (SELECT id FROM mailboxes)"
    return {
        "counters": counters,
        "domains": "SELECT id, name FROM domains ORDER BY id",
        "domain_aliases": "SELECT alias, domain_id FROM domain_aliases",
        "accounts": "SELECT id, domain_id, name, salt, iterations, stored_key, server_key, "
        "shared_secret, pop_enabled, xtnd_enabled FROM accounts ORDER BY id",
        "mailboxes": "SELECT id, account_id, name, uidvalidity, next_uid FROM mailboxes "
        "ORDER BY id",
        "routes": "SELECT pattern, target FROM routes",
        "acl": "SELECT mailbox_id, identifier, negative, rights FROM acl",
        "group_members": "SELECT group_name, member FROM group_members",
        "bodies": f"SELECT b.id, b.size, {body} FROM bodies b WHERE b.id IN "
        f"(SELECT m.body_id FROM messages m WHERE {live}) ORDER BY b.id",
        "messages": "SELECT m.mailbox_id, m.uid, m.body_id, m.size, m.flags, m.internal_date, "
        f"m.x_real_to, m.individual, m.prefix FROM messages m WHERE {live} "
        "ORDER BY m.mailbox_id, m.uid",
        "message_individuals": "SELECT i.mailbox_id, i.individual, i.uid "
        "FROM message_individuals i "
        "JOIN messages m ON m.mailbox_id = i.mailbox_id AND m.uid = i.uid WHERE " + live,
        "duplicates": "SELECT message_id, rcpt, seen_at FROM duplicates",
        "alerts": "SELECT id, scope, target, text, created FROM alerts ORDER BY id",
        "alerts_delivered": "SELECT alert_id, account, delivered_at FROM alerts_delivered",
        "queue_messages": "SELECT id, sender, account, message, created FROM queue_messages "
        "ORDER BY id",
        "queue_recipients": "SELECT message_id, recipient, "
        "CASE state WHEN 'sending' THEN 'queued' ELSE state END, attempts, next_attempt, "
        "last_error FROM queue_recipients",
        "submissions": "SELECT account, at, recipients FROM submissions",
        "account_quotas": "SELECT account_id, storage_used, messages_used, storage_limit, "
        "messages_limit FROM account_quotas",
        "domain_quotas": "SELECT domain_id, storage_limit, messages_limit FROM domain_quotas",
    }


def nonempty_tables(conn: SqlConn) -> list[str]:
    """The tables of COPY_TABLES that hold a row (the counters always do: not counted)."""
    return [
        name
        for name in COPY_TABLES
        if name != "counters"
        and conn.execute(f"SELECT 1 FROM {name} LIMIT 1").fetchone() is not None
    ]
