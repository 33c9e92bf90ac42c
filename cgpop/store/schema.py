"""SQLite schema, versioned: MIGRATIONS[i] takes a database from version i to i + 1.

Later features append migrations; an existing data directory is upgraded at open.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    # 1: the core store.
    """
    CREATE TABLE domains (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    );
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        domain_id INTEGER NOT NULL REFERENCES domains(id),
        name TEXT NOT NULL,
        salt BLOB NOT NULL,
        iterations INTEGER NOT NULL,
        stored_key BLOB NOT NULL,
        server_key BLOB NOT NULL,
        shared_secret TEXT,
        UNIQUE (domain_id, name)
    );
    -- AUTOINCREMENT: a mailbox id is never reused, so neither is a UIDL (RFC 1939 section 7).
    CREATE TABLE mailboxes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id INTEGER NOT NULL REFERENCES accounts(id),
        name TEXT NOT NULL,
        uidvalidity INTEGER NOT NULL,
        next_uid INTEGER NOT NULL DEFAULT 1,
        UNIQUE (account_id, name)
    );
    -- Single-instance store: one row per delivery, shared by all its copies. Small bodies
    -- live inline in `data`; large ones in a file under bodies/ named by `file`.
    -- Both hold the CRLF-normalised, dot-stuffed octets; `size` is the unstuffed length.
    CREATE TABLE bodies (
        id INTEGER PRIMARY KEY,
        size INTEGER NOT NULL,
        data BLOB,
        file TEXT,
        refs INTEGER NOT NULL,
        zero_at REAL
    );
    CREATE INDEX bodies_unreferenced ON bodies(zero_at) WHERE refs = 0;
    -- An expunged copy keeps its row (and so its prefix and body) until no session that
    -- opened before the expunge is still open; the server's collector then deletes it.
    -- mailbox_id has no foreign key for the same reason: a removed mailbox's copies linger.
    CREATE TABLE messages (
        mailbox_id INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        body_id INTEGER NOT NULL REFERENCES bodies(id),
        size INTEGER NOT NULL,
        flags INTEGER NOT NULL DEFAULT 0,
        internal_date REAL NOT NULL,
        x_real_to TEXT,
        individual TEXT,
        expunged_at REAL,
        prefix BLOB NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID;
    -- Individual-name logins read only this index (no header parsing at login).
    CREATE INDEX messages_individual ON messages(mailbox_id, individual, uid)
        WHERE individual IS NOT NULL;
    CREATE INDEX messages_expunged ON messages(expunged_at) WHERE expunged_at IS NOT NULL;
    -- Every expunge of a copy, however it happens, releases its body once.
    CREATE TRIGGER messages_expunge_releases_body AFTER UPDATE OF expunged_at ON messages
    WHEN OLD.expunged_at IS NULL AND NEW.expunged_at IS NOT NULL BEGIN
        UPDATE bodies SET refs = refs - 1,
            zero_at = CASE WHEN refs - 1 = 0 THEN NEW.expunged_at ELSE zero_at END
        WHERE id = OLD.body_id;
    END;
    CREATE TABLE duplicates (
        message_id TEXT NOT NULL,
        rcpt TEXT NOT NULL,
        seen_at REAL NOT NULL,
        PRIMARY KEY (message_id, rcpt)
    ) WITHOUT ROWID;
    """,
]


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations, each in its own transaction. Returns the final version."""
    current = version(conn)
    if current > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {current} is newer than this cgpop ({len(MIGRATIONS)})"
        )
    for target in range(current + 1, len(MIGRATIONS) + 1):
        script = MIGRATIONS[target - 1]
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {target};\nCOMMIT;"
            )
        except sqlite3.Error:
            if conn.in_transaction:
                conn.rollback()
            raise
    return version(conn)


MIGRATIONS.append(
    # 2: the routing table and domain aliases (router/).
    """
    CREATE TABLE routes (
        pattern TEXT PRIMARY KEY,
        target TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE domain_aliases (
        alias TEXT PRIMARY KEY,
        domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE
    ) WITHOUT ROWID;
    """
)

MIGRATIONS.append(
    # 3: access control (Cyrus ACL semantics, accounts/acl.py) and groups.
    """
    CREATE TABLE acl (
        mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        identifier TEXT NOT NULL,  -- 'name@domain', 'group:NAME', 'anyone', 'anonymous'
        negative INTEGER NOT NULL DEFAULT 0,
        rights TEXT NOT NULL,
        PRIMARY KEY (mailbox_id, negative, identifier)
    ) WITHOUT ROWID;
    CREATE TABLE group_members (
        group_name TEXT NOT NULL,
        member TEXT NOT NULL,  -- 'name@domain'
        PRIMARY KEY (group_name, member)
    ) WITHOUT ROWID;
    CREATE INDEX group_members_member ON group_members(member);
    """
)

MIGRATIONS.append(
    # 4: CommuniGate-style alerts: per account, per domain or server-wide, each delivered
    # once to each account it concerns.
    """
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        scope TEXT NOT NULL CHECK (scope IN ('account', 'domain', 'server')),
        target TEXT NOT NULL,  -- 'name@domain', 'domain', or '' for the server
        text TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE alerts_delivered (
        alert_id INTEGER NOT NULL REFERENCES alerts(id) ON DELETE CASCADE,
        account TEXT NOT NULL,  -- 'name@domain'
        delivered_at REAL NOT NULL,
        PRIMARY KEY (alert_id, account)
    ) WITHOUT ROWID;
    """
)

MIGRATIONS.append(
    # 5: the outbound queue of XTND XMIT (xtnd/): one message, one row per recipient.
    """
    CREATE TABLE queue_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sender TEXT NOT NULL,
        account TEXT NOT NULL,  -- the submitting account, for DSNs
        message BLOB NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE queue_recipients (
        message_id INTEGER NOT NULL REFERENCES queue_messages(id) ON DELETE CASCADE,
        recipient TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued'
            CHECK (state IN ('queued', 'sending', 'sent', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        last_error TEXT,
        PRIMARY KEY (message_id, recipient)
    ) WITHOUT ROWID;
    CREATE INDEX queue_due ON queue_recipients(next_attempt) WHERE state = 'queued';
    CREATE TABLE submissions (
        account TEXT NOT NULL,
        at REAL NOT NULL,
        recipients INTEGER NOT NULL
    );
    CREATE INDEX submissions_by_account ON submissions(account, at);
    """
)


def _directory_version_migration() -> str:
    """6: a counter bumped by every change to the tables routing and rights are derived from,
    so answers derived from them can be cached until it moves (also across processes: the
    CLI's changes bump it too). Mailbox UID allocation is not a directory change."""
    watched = {
        "domains": "",
        "domain_aliases": "",
        "accounts": "",
        "routes": "",
        "acl": "",
        "group_members": "",
        "mailboxes": " OF id, account_id, name",
    }
    parts = [
        "CREATE TABLE directory_version (id INTEGER PRIMARY KEY CHECK (id = 1), "
        "v INTEGER NOT NULL);",
        "INSERT INTO directory_version VALUES (1, 0);",
    ]
    for table, columns in watched.items():
        for event in ("INSERT", "UPDATE", "DELETE"):
            what = f"UPDATE{columns}" if event == "UPDATE" else event
            parts.append(
                f"CREATE TRIGGER {table}_{event.lower()}_bumps_directory AFTER {what} ON {table} "
                "BEGIN UPDATE directory_version SET v = v + 1; END;"
            )
    return "\n".join(parts)


MIGRATIONS.append(_directory_version_migration())


# ---- issue 13, item 1 (fid): several individual names per message --------------------------
MIGRATIONS.append(
    # 7: individual names beyond the first. A message whose own X-Real-To field lists several
    # addresses routed to its account is visible to each of their individual names. The first
    # name stays in messages.individual (the common, single-name case keeps its one indexed
    # lookup and its row unchanged); the others get a row each here, read at login by an
    # indexed lookup too. A separate table rather than a delimited column: a match inside a
    # list (LIKE '%,name,%') cannot use an index and would scan the whole mailbox at every
    # individual login. Rows go with their message (trigger), so expunge and the collector
    # need no change.
    """
    CREATE TABLE message_individuals (
        mailbox_id INTEGER NOT NULL,
        individual TEXT NOT NULL,
        uid INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, individual, uid)
    ) WITHOUT ROWID;
    CREATE INDEX message_individuals_by_uid ON message_individuals(mailbox_id, uid);
    CREATE TRIGGER messages_delete_drops_individuals AFTER DELETE ON messages
    WHEN OLD.individual IS NOT NULL BEGIN
        DELETE FROM message_individuals WHERE mailbox_id = OLD.mailbox_id AND uid = OLD.uid;
    END;
    """
)
# ---- end of issue 13, item 1 ----------------------------------------------------------------


# ---- issue 13, item 5 (fid): account services (CommuniGate "Enabled Services") ------------
MIGRATIONS.append(
    # 8: a suspended service keeps the account and its mail; only the service is refused.
    # The directory-version trigger on accounts (migration 6) makes a running server see it.
    """
    ALTER TABLE accounts ADD COLUMN pop_enabled INTEGER NOT NULL DEFAULT 1
        CHECK (pop_enabled IN (0, 1));
    ALTER TABLE accounts ADD COLUMN xtnd_enabled INTEGER NOT NULL DEFAULT 1
        CHECK (xtnd_enabled IN (0, 1));
    """
)
# ---- end of issue 13, item 5 ----------------------------------------------------------------


MIGRATIONS.append(
    # 9: uidvalidity from a persistent counter, never the clock, so it never repeats for a
    # mailbox name across removal, re-creation and restart, and neither does a UIDL (RFC 1939
    # section 7: a re-created mailbox's first message must not reuse an old unique-id).
    # The seed lies above every value the earlier rule, max(now, max(existing) + 1), can have
    # given out, removed mailboxes included: each such value was at most its creation time
    # plus the number of mailboxes created so far, which AUTOINCREMENT keeps in sqlite_sequence.
    # Existing mailboxes keep their uidvalidity.
    """
    CREATE TABLE uidvalidity_counter (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        last INTEGER NOT NULL
    );
    INSERT INTO uidvalidity_counter VALUES (1, max(
        coalesce((SELECT max(uidvalidity) FROM mailboxes), 0),
        CAST(strftime('%s', 'now') AS INTEGER)
            + coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'mailboxes'), 0)
    ));
    """
)


# ---- issue 12, section 3 (sessions): live POP sessions and telemetry flags -----------------
MIGRATIONS.append(
    # 10: one row per logged-in POP session of a serving process (`owner` is "pid:start time",
    # so the rows of a process that is gone can be told apart from a new one with its pid);
    # `kill_requested` is how `cgpop sessions kill` reaches it. Telemetry flags per account,
    # with a version counter the serving processes poll.
    """
    CREATE TABLE live_sessions (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        node TEXT NOT NULL,
        peer TEXT NOT NULL,
        login TEXT NOT NULL,
        account TEXT NOT NULL,
        mailbox TEXT NOT NULL,
        state TEXT NOT NULL,
        since REAL NOT NULL,
        sent_bytes INTEGER NOT NULL DEFAULT 0,
        tls INTEGER NOT NULL DEFAULT 0,
        kill_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX live_sessions_owner ON live_sessions(owner);
    CREATE TABLE telemetry (account TEXT PRIMARY KEY);
    CREATE TABLE telemetry_version (id INTEGER PRIMARY KEY CHECK (id = 1), v INTEGER NOT NULL);
    INSERT INTO telemetry_version VALUES (1, 0);
    """
)
# ---- end of issue 12, section 3 -------------------------------------------------------------
# ---- issue 12, item 1 (quota): usage and limits --------------------------------------------
MIGRATIONS.append(
    # Usage per account (the quota root: all its mailboxes), moved in the same transaction as
    # every delivery, import and expunge; limits per account and per domain (a domain's usage
    # is the sum over its accounts). A row appears with an account's first copy; this step
    # counts the copies already stored, once.
    """
    CREATE TABLE account_quotas (
        account_id INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
        storage_used INTEGER NOT NULL DEFAULT 0,
        messages_used INTEGER NOT NULL DEFAULT 0,
        storage_limit INTEGER,
        messages_limit INTEGER
    );
    CREATE TABLE domain_quotas (
        domain_id INTEGER PRIMARY KEY REFERENCES domains(id) ON DELETE CASCADE,
        storage_limit INTEGER,
        messages_limit INTEGER
    );
    INSERT INTO account_quotas(account_id, storage_used, messages_used)
        SELECT a.id, coalesce(sum(m.size), 0), count(m.uid) FROM accounts a
        LEFT JOIN mailboxes b ON b.account_id = a.id
        LEFT JOIN messages m ON m.mailbox_id = b.id AND m.expunged_at IS NULL
        GROUP BY a.id;
    """
)
# ---- end of issue 12, item 1 ----------------------------------------------------------------
