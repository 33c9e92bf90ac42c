"""The embedded snapshot store: SQLite in WAL mode under the data directory.

Methods are blocking; the asyncio layer runs them in worker threads (one connection per thread).
Durability: deliveries commit with synchronous=FULL after body files are fsynced, so an
acknowledged message survives a crash and a crash before commit leaves nothing visible (an
orphan body file at most, removed at the next start).

Body files and concurrent writers: a writer (the server's LMTP and XTND paths, `cgpop deliver`,
`cgpop mailbox import`, another worker process) writes a large body's file *before* the
transaction that names it commits. Each such file is held open with a shared `flock` from its
creation until that transaction has ended, and the orphan sweep only removes a file it can lock
exclusively and, once locked, still finds unnamed. A writer that dies loses its locks with its
process, so its files become sweepable; a live writer's file never is. No global lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import secrets
import sqlite3
import time
from array import array
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path

from accounts.acl import DEFAULT_PUBLIC_ACL, AclEntry, Rights
from accounts.credentials import Credentials
from cgpop.spool import Octets, SpooledMessage, StreamStuffer
from cgpop.store import schema
from cgpop.store.api import (
    SEEN,
    SERVICES,
    Account,
    Copy,
    HoldBoard,
    Mailbox,
    MessageInfo,
    NotFound,
    OpenedSession,
    Snapshot,
    Stored,
    StoredMessage,
    StoreError,
    flag_names,
)
from cgpop.store.naming import rename_plan
from cgpop.store.quota_rules import merge
from cgpop.store.sqlite_alerts import SqliteAlerts
from cgpop.store.sqlite_base import translate_errors
from cgpop.store.sqlite_copy import SqliteCopy
from cgpop.store.sqlite_live import SqliteLive
from cgpop.store.sqlite_queue import SqliteQueue
from cgpop.store.sqlite_quota import SqliteQuotas
from cgpop.wire import dot_stuff, normalize_crlf

# Bodies up to this size are kept inline in the database: one fsync per delivery, no file
# open per RETR. Larger ones go to files and are streamed.
INLINE_MAX = 128 * 1024
# SQLite's default SQLITE_MAX_VARIABLE_NUMBER is 32766 since 3.32; stay far below it.
_CHUNK = 500
# The account whose new mailboxes start with DEFAULT_PUBLIC_ACL (CommuniGate/Cyrus "public").
PUBLIC_ACCOUNT = "public"


def _now() -> float:
    return time.time()


def _stored_prefix(copy: Copy) -> bytes:
    """A copy's header lines as stored (their octets count in its size, as POP reports it)."""
    return dot_stuff(normalize_crlf(copy.prefix)) if copy.prefix else b""


def _file_chunks(path: Path, chunk_size: int) -> Generator[bytes, None, None]:
    """A body kept in a file, in bounded chunks (StoredMessage.reader)."""
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            yield chunk


@translate_errors
class SqliteStore(SqliteQueue, SqliteAlerts, SqliteCopy, SqliteLive, SqliteQuotas):
    def __init__(
        self,
        data_dir: Path,
        *,
        duplicate_window: float | None = None,
        holds: HoldBoard | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        super().__init__(self.data_dir / "cgpop.sqlite3")
        self.bodies_dir = self.data_dir / "bodies"
        self.duplicate_window = duplicate_window
        # Open sessions by the time their snapshot was taken: the collector keeps every
        # expunged copy that one of them may still read.
        self._open: Counter[float] = Counter()
        # With `[server] workers`, the other workers' oldest open snapshots (cgpop/shared.py):
        # this process publishes its own there, and the collector honours all of them.
        self._holds = holds
        if holds is not None:
            holds.publish(None)  # a replacement worker: its predecessor's sessions are gone
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.bodies_dir / "tmp").mkdir(parents=True, exist_ok=True)
        schema.migrate(self._conn())

    # --- domains ---
    def add_domain(self, name: str) -> None:
        with self._tx() as conn:
            if conn.execute(
                "SELECT 1 FROM domain_aliases WHERE alias = ?", (name.lower(),)
            ).fetchone():
                raise StoreError(f"{name} is already a domain alias")
            try:
                conn.execute("INSERT INTO domains(name) VALUES (?)", (name.lower(),))
            except sqlite3.IntegrityError:
                raise StoreError(f"domain already exists: {name}") from None

    def remove_domain(self, name: str) -> None:
        with self._tx() as conn:
            did = self._domain_id(conn, name)
            (count,) = conn.execute(
                "SELECT count(*) FROM accounts WHERE domain_id = ?", (did,)
            ).fetchone()
            if count:
                raise StoreError(f"domain {name} still has {count} account(s); remove them first")
            conn.execute("DELETE FROM domains WHERE id = ?", (did,))

    def list_domains(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT name FROM domains ORDER BY name")]

    def domain_exists(self, name: str) -> bool:
        row = self._conn().execute("SELECT 1 FROM domains WHERE name = ?", (name.lower(),))
        return row.fetchone() is not None

    def directory_version(self) -> int:
        """Moves with every change to domains, aliases, accounts, mailboxes, routes, ACLs and
        groups, from any process (schema migration 6)."""
        row = self._conn().execute("SELECT v FROM directory_version").fetchone()
        return int(row[0])

    # --- the router's view (router.resolve.Directory) ---
    def canonical_domain(self, name: str) -> str | None:
        name = name.lower()
        row = (
            self._conn()
            .execute(
                "SELECT name FROM domains WHERE name = ? UNION ALL "
                "SELECT d.name FROM domain_aliases a JOIN domains d ON d.id = a.domain_id "
                "WHERE a.alias = ?",
                (name, name),
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

    def account_exists(self, domain: str, account: str) -> bool:
        row = (
            self._conn()
            .execute(
                "SELECT 1 FROM accounts a JOIN domains d ON d.id = a.domain_id "
                "WHERE d.name = ? AND a.name = ?",
                (domain.lower(), account.lower()),
            )
            .fetchone()
        )
        return row is not None

    def route_target(self, pattern: str) -> str | None:
        row = self._conn().execute("SELECT target FROM routes WHERE pattern = ?", (pattern,))
        found = row.fetchone()
        return None if found is None else str(found[0])

    def add_route(self, pattern: str, target: str) -> None:
        with self._tx() as conn:
            try:
                conn.execute("INSERT INTO routes(pattern, target) VALUES (?, ?)", (pattern, target))
            except sqlite3.IntegrityError:
                raise StoreError(f"a route for {pattern} already exists") from None

    def remove_route(self, pattern: str) -> None:
        with self._tx() as conn:
            if conn.execute("DELETE FROM routes WHERE pattern = ?", (pattern,)).rowcount == 0:
                raise NotFound(f"no route for {pattern}")

    def list_routes(self) -> list[tuple[str, str]]:
        rows = self._conn().execute("SELECT pattern, target FROM routes ORDER BY pattern")
        return [(str(p), str(t)) for p, t in rows]

    def add_domain_alias(self, alias: str, domain: str) -> None:
        with self._tx() as conn:
            did = self._domain_id(conn, domain)
            alias = alias.lower()
            if conn.execute("SELECT 1 FROM domains WHERE name = ?", (alias,)).fetchone():
                raise StoreError(f"{alias} is a domain, not a free alias name")
            try:
                conn.execute(
                    "INSERT INTO domain_aliases(alias, domain_id) VALUES (?, ?)", (alias, did)
                )
            except sqlite3.IntegrityError:
                raise StoreError(f"alias already exists: {alias}") from None

    def remove_domain_alias(self, alias: str, domain: str) -> None:
        with self._tx() as conn:
            did = self._domain_id(conn, domain)
            cur = conn.execute(
                "DELETE FROM domain_aliases WHERE alias = ? AND domain_id = ?", (alias.lower(), did)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no alias {alias} for {domain}")

    def list_domain_aliases(self) -> list[tuple[str, str]]:
        rows = self._conn().execute(
            "SELECT a.alias, d.name FROM domain_aliases a JOIN domains d ON d.id = a.domain_id "
            "ORDER BY a.alias"
        )
        return [(str(a), str(d)) for a, d in rows]

    # --- accounts ---
    def _account_id(self, conn: sqlite3.Connection, domain: str, name: str) -> int:
        row = conn.execute(
            "SELECT a.id FROM accounts a JOIN domains d ON d.id = a.domain_id "
            "WHERE d.name = ? AND a.name = ?",
            (domain.lower(), name.lower()),
        ).fetchone()
        if row is None:
            raise NotFound(f"no such account: {name}@{domain}")
        return int(row[0])

    def add_account(self, domain: str, name: str, creds: Credentials) -> None:
        self.add_accounts([(domain, name, creds)])

    def set_credentials(self, domain: str, name: str, creds: Credentials) -> None:
        with self._tx() as conn:
            aid = self._account_id(conn, domain, name)
            conn.execute(
                "UPDATE accounts SET salt = ?, iterations = ?, stored_key = ?, server_key = ?, "
                "shared_secret = ? WHERE id = ?",
                (
                    creds.salt,
                    creds.iterations,
                    creds.stored_key,
                    creds.server_key,
                    creds.shared_secret,
                    aid,
                ),
            )

    def remove_account(self, domain: str, name: str) -> None:
        with self._tx() as conn:
            aid = self._account_id(conn, domain, name)
            ids = [
                r[0] for r in conn.execute("SELECT id FROM mailboxes WHERE account_id = ?", (aid,))
            ]
            for mid in ids:
                self._drop_mailbox(conn, mid)
            conn.execute("DELETE FROM accounts WHERE id = ?", (aid,))
            # A later account of the same name must not inherit this one's rights.
            address = f"{name.lower()}@{domain.lower()}"
            conn.execute("DELETE FROM acl WHERE identifier = ?", (address,))
            conn.execute("DELETE FROM group_members WHERE member = ?", (address,))

    def list_accounts(self, domain: str | None = None) -> list[str]:
        sql = "SELECT a.name || '@' || d.name FROM accounts a JOIN domains d ON d.id = a.domain_id"
        args: tuple[str, ...] = ()
        if domain is not None:
            self._domain_id(self._conn(), domain)
            sql += " WHERE d.name = ?"
            args = (domain.lower(),)
        return [r[0] for r in self._conn().execute(sql + " ORDER BY d.name, a.name", args)]

    def get_account(self, domain: str, name: str) -> Account | None:
        row = (
            self._conn()
            .execute(
                "SELECT a.id, a.salt, a.iterations, a.stored_key, a.server_key, a.shared_secret, "
                "a.pop_enabled, a.xtnd_enabled "
                "FROM accounts a JOIN domains d ON d.id = a.domain_id "
                "WHERE d.name = ? AND a.name = ?",
                (domain.lower(), name.lower()),
            )
            .fetchone()
        )
        if row is None:
            return None
        creds = Credentials(bytes(row[1]), int(row[2]), bytes(row[3]), bytes(row[4]), row[5])
        disabled = frozenset(s for s, on in zip(SERVICES, row[6:8], strict=True) if not on)
        return Account(int(row[0]), domain.lower(), name.lower(), creds, disabled)

    # --- account services (issue 13; schema migration 8) ---
    def set_services_enabled(
        self, domain: str, name: str, services: Sequence[str], enabled: bool
    ) -> None:
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise StoreError(f"unknown service(s): {', '.join(sorted(unknown))}")
        with self._tx() as conn:
            aid = self._account_id(conn, domain, name)
            for service in services:
                # The column name comes from SERVICES, never from the caller's text.
                column = {"pop": "pop_enabled", "xtnd": "xtnd_enabled"}[service]
                conn.execute(f"UPDATE accounts SET {column} = ? WHERE id = ?", (int(enabled), aid))

    def disabled_services(self, domain: str | None = None) -> dict[str, frozenset[str]]:
        sql = (
            "SELECT a.name || '@' || d.name, a.pop_enabled, a.xtnd_enabled "
            "FROM accounts a JOIN domains d ON d.id = a.domain_id"
        )
        args: tuple[str, ...] = ()
        if domain is not None:
            self._domain_id(self._conn(), domain)
            sql += " WHERE d.name = ?"
            args = (domain.lower(),)
        return {
            str(address): frozenset(s for s, on in zip(SERVICES, flags, strict=True) if not on)
            for address, *flags in self._conn().execute(sql + " ORDER BY d.name, a.name", args)
        }

    # --- mailboxes ---
    def _insert_mailbox(self, conn: sqlite3.Connection, account_id: int, name: str) -> int:
        # uidvalidity comes from a persistent counter (schema migration 9), never the clock:
        # it never repeats, even for a mailbox removed and re-created in the same second or
        # after a restart, so a re-created mailbox never repeats a UIDL.
        conn.execute("UPDATE uidvalidity_counter SET last = last + 1")
        (uidvalidity,) = conn.execute("SELECT last FROM uidvalidity_counter").fetchone()
        try:
            cur = conn.execute(
                "INSERT INTO mailboxes(account_id, name, uidvalidity) VALUES (?, ?, ?)",
                (account_id, name, uidvalidity),
            )
        except sqlite3.IntegrityError:
            raise StoreError(f"mailbox already exists: {name}") from None
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _drop_mailbox(self, conn: sqlite3.Connection, mailbox_id: int) -> None:
        # Copies are expunged, not deleted: open sessions may still read them.
        gone = conn.execute(
            "UPDATE messages SET expunged_at = ? WHERE mailbox_id = ? AND expunged_at IS NULL "
            "RETURNING size",
            (_now(), mailbox_id),
        ).fetchall()
        self._quota_move(conn, mailbox_id, [-int(r[0]) for r in gone])
        conn.execute("DELETE FROM mailboxes WHERE id = ?", (mailbox_id,))

    def add_mailbox(self, domain: str, account: str, mailbox: str) -> Mailbox:
        with self._tx() as conn:
            aid = self._account_id(conn, domain, account)
            box_id = self._insert_mailbox(conn, aid, mailbox)
            if not self._inherit_acl(conn, aid, mailbox, box_id):
                self._default_acl(conn, account, box_id)
        found = self.get_mailbox(domain, account, mailbox)
        assert found is not None
        return found

    def remove_mailbox(self, domain: str, account: str, mailbox: str) -> None:
        if mailbox == "INBOX":
            raise StoreError("INBOX cannot be removed; remove the account instead")
        with self._tx() as conn:
            aid = self._account_id(conn, domain, account)
            row = conn.execute(
                "SELECT id FROM mailboxes WHERE account_id = ? AND name = ?", (aid, mailbox)
            ).fetchone()
            if row is None:
                raise NotFound(f"no such mailbox: {mailbox}")
            self._drop_mailbox(conn, int(row[0]))

    def rename_mailbox(self, domain: str, account: str, old: str, new: str) -> None:
        with self._tx() as conn:
            aid = self._account_id(conn, domain, account)
            rows = conn.execute(
                "SELECT id, name FROM mailboxes WHERE account_id = ?", (aid,)
            ).fetchall()
            plan = rename_plan(((int(i), str(n)) for i, n in rows), old, new)
            for box_id, name in plan:
                conn.execute("UPDATE mailboxes SET name = ? WHERE id = ?", (name, box_id))

    def list_mailboxes(self, domain: str, account: str) -> list[str]:
        conn = self._conn()
        aid = self._account_id(conn, domain, account)
        rows = conn.execute("SELECT name FROM mailboxes WHERE account_id = ? ORDER BY name", (aid,))
        return [r[0] for r in rows]

    def get_mailbox(self, domain: str, account: str, mailbox: str) -> Mailbox | None:
        row = (
            self._conn()
            .execute(
                "SELECT m.id, m.account_id, m.uidvalidity FROM mailboxes m "
                "JOIN accounts a ON a.id = m.account_id JOIN domains d ON d.id = a.domain_id "
                "WHERE d.name = ? AND a.name = ? AND m.name = ?",
                (domain.lower(), account.lower(), mailbox),
            )
            .fetchone()
        )
        if row is None:
            return None
        owner = f"{account.lower()}@{domain.lower()}"
        return Mailbox(int(row[0]), int(row[1]), owner, mailbox, int(row[2]))

    def list_messages(self, mailbox: Mailbox) -> list[MessageInfo]:
        conn = self._conn()
        more: dict[int, list[str]] = {}
        for uid, name in conn.execute(
            "SELECT uid, individual FROM message_individuals WHERE mailbox_id = ? "
            "ORDER BY uid, individual",
            (mailbox.id,),
        ):
            more.setdefault(int(uid), []).append(str(name))
        rows = conn.execute(
            "SELECT uid, size, flags, x_real_to, internal_date, individual FROM messages "
            "WHERE mailbox_id = ? AND expunged_at IS NULL ORDER BY uid",
            (mailbox.id,),
        )
        return [
            MessageInfo(
                uid,
                f"{mailbox.uidvalidity:x}.{uid}",
                size,
                tuple(flag_names(flags)),
                x_real_to,
                when,
                (individual, *more.get(uid, ())) if individual is not None else (),
            )
            for uid, size, flags, x_real_to, when, individual in rows
        ]

    def message_flags(self, mailbox_id: int, uid: int) -> int | None:
        row = (
            self._conn()
            .execute(
                "SELECT flags FROM messages WHERE mailbox_id = ? AND uid = ?", (mailbox_id, uid)
            )
            .fetchone()
        )
        return None if row is None else int(row[0])

    # --- ACL and groups (accounts/acl.py has the rights arithmetic) ---
    def _default_acl(self, conn: sqlite3.Connection, account: str, mailbox_id: int) -> None:
        # Issue 3: every new mailbox of an account named `public` (in any domain) is readable
        # by everybody until its owner or an admin says otherwise.
        if account.lower() == PUBLIC_ACCOUNT:
            conn.executemany(
                "INSERT INTO acl(mailbox_id, identifier, negative, rights) VALUES (?, ?, ?, ?)",
                [
                    (mailbox_id, e.identifier, int(e.negative), str(e.rights))
                    for e in DEFAULT_PUBLIC_ACL
                ],
            )

    def _inherit_acl(
        self, conn: sqlite3.Connection, account_id: int, mailbox: str, mailbox_id: int
    ) -> bool:
        """Issue 13, Cyrus's rule: a new mailbox starts with a copy of its parent's ACL, the
        parent being the nearest existing ancestor in the `/` hierarchy (`a/b/c` looks at
        `a/b`, then `a`). False when it has none (the caller applies the defaults). A
        top-level mailbox has no parent here: INBOX is its sibling, as in CommuniGate's
        folders, so sharing INBOX does not share every new top-level mailbox (Cyrus nests
        them under INBOX, which would)."""
        parts = mailbox.split("/")
        for cut in range(len(parts) - 1, 0, -1):
            row = conn.execute(
                "SELECT id FROM mailboxes WHERE account_id = ? AND name = ?",
                (account_id, "/".join(parts[:cut])),
            ).fetchone()
            if row is not None:
                conn.execute(
                    "INSERT INTO acl(mailbox_id, identifier, negative, rights) "
                    "SELECT ?, identifier, negative, rights FROM acl WHERE mailbox_id = ?",
                    (mailbox_id, int(row[0])),
                )
                return True
        return False

    def acl_entries(self, mailbox: Mailbox) -> list[AclEntry]:
        """The mailbox's ACL, positive entries first, each group sorted by identifier."""
        rows = self._conn().execute(
            "SELECT identifier, negative, rights FROM acl WHERE mailbox_id = ? "
            "ORDER BY negative, identifier",
            (mailbox.id,),
        )
        return [AclEntry(str(i), Rights.parse(str(r)), bool(n)) for i, n, r in rows]

    def get_acl_entry(
        self, mailbox: Mailbox, identifier: str, negative: bool = False
    ) -> AclEntry | None:
        row = (
            self._conn()
            .execute(
                "SELECT rights FROM acl WHERE mailbox_id = ? AND identifier = ? AND negative = ?",
                (mailbox.id, identifier, int(negative)),
            )
            .fetchone()
        )
        return None if row is None else AclEntry(identifier, Rights.parse(str(row[0])), negative)

    def set_acl_entry(self, mailbox: Mailbox, entry: AclEntry) -> None:
        """Add or replace the entry for (identifier, negative). Empty rights remove it, as
        Cyrus's SETACL with an empty rights string does (RFC 4314 section 3.1)."""
        if not entry.rights:
            with contextlib.suppress(NotFound):
                self.delete_acl_entry(mailbox, entry.identifier, entry.negative)
            return
        with self._tx() as conn:
            try:
                conn.execute(
                    "INSERT INTO acl(mailbox_id, identifier, negative, rights) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(mailbox_id, negative, identifier) "
                    "DO UPDATE SET rights = excluded.rights",
                    (mailbox.id, entry.identifier, int(entry.negative), str(entry.rights)),
                )
            except sqlite3.IntegrityError:  # the foreign key: the mailbox was removed
                raise NotFound(f"no such mailbox: {mailbox.name}") from None

    def delete_acl_entry(self, mailbox: Mailbox, identifier: str, negative: bool = False) -> None:
        with self._tx() as conn:
            cur = conn.execute(
                "DELETE FROM acl WHERE mailbox_id = ? AND identifier = ? AND negative = ?",
                (mailbox.id, identifier, int(negative)),
            )
            if cur.rowcount == 0:
                sign = "-" if negative else ""
                raise NotFound(f"no ACL entry for {sign}{identifier} on {mailbox.name}")

    def add_group_member(self, group: str, member: str) -> None:
        with self._tx() as conn:
            try:
                conn.execute(
                    "INSERT INTO group_members(group_name, member) VALUES (?, ?)",
                    (group.lower(), member.lower()),
                )
            except sqlite3.IntegrityError:
                raise StoreError(f"{member} is already in group {group}") from None

    def remove_group_member(self, group: str, member: str) -> None:
        with self._tx() as conn:
            cur = conn.execute(
                "DELETE FROM group_members WHERE group_name = ? AND member = ?",
                (group.lower(), member.lower()),
            )
            if cur.rowcount == 0:
                raise NotFound(f"{member} is not in group {group}")

    def list_group_members(self, group: str | None = None) -> list[tuple[str, str]]:
        """(group, member) pairs, sorted; one group's only when `group` is given."""
        sql = "SELECT group_name, member FROM group_members"
        args: tuple[str, ...] = ()
        if group is not None:
            sql += " WHERE group_name = ?"
            args = (group.lower(),)
        rows = self._conn().execute(sql + " ORDER BY group_name, member", args)
        return [(str(g), str(m)) for g, m in rows]

    def groups_of(self, address: str) -> frozenset[str]:
        rows = self._conn().execute(
            "SELECT group_name FROM group_members WHERE member = ?", (address.lower(),)
        )
        return frozenset(str(r[0]) for r in rows)

    # --- delivery ---
    def _write_body_file(self, chunks: Iterable[bytes], pins: list[int]) -> str:
        """Write and fsync a body file from stuffed `chunks`. Its descriptor, holding a shared
        flock, is appended to `pins` and must stay open until the transaction naming the file
        has ended (see the module docstring), then be released with `_release`."""
        while True:
            name = secrets.token_hex(16)
            tmp = self.bodies_dir / "tmp" / name
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            pins.append(fd)
            fcntl.flock(fd, fcntl.LOCK_SH)
            # The sweep may have removed the file between open and flock: start again.
            if os.fstat(fd).st_nlink:
                break
        rel = f"{name[:2]}/{name}"
        final = self.bodies_dir / rel
        final.parent.mkdir(exist_ok=True)
        try:
            with open(fd, "wb", closefd=False) as fh:
                for chunk in chunks:
                    fh.write(chunk)
                fh.flush()
                os.fsync(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dirfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        return rel

    def _write_stuffed_stream(self, message: SpooledMessage, pins: list[int]) -> tuple[str, int]:
        """A spooled message's body file, normalised and stuffed chunk by chunk (never whole
        in memory): its name and the normalised size. Pinned as by `_write_body_file`."""
        stuffer = StreamStuffer()

        def stuffed() -> Iterator[bytes]:
            for chunk in message.chunks():
                yield stuffer.feed(chunk)
            yield stuffer.finish()

        return self._write_body_file(stuffed(), pins), stuffer.size

    @staticmethod
    def _release(pins: list[int]) -> None:
        for fd in pins:
            os.close(fd)
        pins.clear()

    def _stored_body(self, raw: Octets, pins: list[int]) -> tuple[int, bytes, str | None]:
        """(size as POP reports it, stuffed octets, body file or None when kept inline). The
        file, if any, is written and fsynced before the caller's transaction commits, and
        pinned (see `_write_body_file`) until the caller releases `pins` after it."""
        if isinstance(raw, SpooledMessage):
            if raw.size > INLINE_MAX:
                name, size = self._write_stuffed_stream(raw, pins)
                return size, b"", name
            raw = b"".join(raw.chunks())
        normalized = normalize_crlf(raw)
        stuffed = dot_stuff(normalized)
        file = self._write_body_file((stuffed,), pins) if len(stuffed) > INLINE_MAX else None
        return len(normalized), stuffed, file

    def _insert_body(
        self, conn: sqlite3.Connection, size: int, stuffed: bytes, file: str | None, refs: int
    ) -> int:
        cur = conn.execute(
            "INSERT INTO bodies(size, data, file, refs) VALUES (?, ?, ?, ?)",
            (size, None if file else stuffed, file, refs),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _next_uid(self, conn: sqlite3.Connection, mailbox_id: int) -> int:
        row = conn.execute(
            "UPDATE mailboxes SET next_uid = next_uid + 1 WHERE id = ? RETURNING next_uid - 1",
            (mailbox_id,),
        ).fetchone()
        if row is None:
            raise NotFound("the mailbox was removed during delivery")
        return int(row[0])

    def deliver(
        self, message: Octets, copies: Sequence[Copy], warn_percent: int | None = None
    ) -> list[Stored]:
        return self.deliver_many([(message, copies)], warn_percent)[0]

    def deliver_many(
        self, items: Sequence[tuple[Octets, Sequence[Copy]]], warn_percent: int | None = None
    ) -> list[list[Stored]]:
        """Several deliveries in one transaction, so concurrent deliveries share one fsync
        (group commit). Per item and copy: stored, or False when suppressed as a duplicate.
        All or nothing: on an exception no item is stored."""
        prepared: list[tuple[int, bytes, str | None, Sequence[Copy]]] = []
        pins: list[int] = []
        try:
            for message, copies in items:
                if not copies:
                    prepared.append((0, b"", None, copies))
                    continue
                prepared.append((*self._stored_body(message, pins), copies))
            now = _now()
            outcome: list[list[Stored]] = []
            with self._tx() as conn:
                for size, stuffed, file, copies in prepared:
                    stored = self._admit(conn, size, copies, now, warn_percent)
                    outcome.append(stored)
                    keep = [c for c, fresh in zip(copies, stored, strict=True) if fresh]
                    if keep:
                        body_id = self._insert_body(conn, size, stuffed, file, len(keep))
                        for copy in keep:
                            self._insert_copy(conn, copy, body_id, size, now)
        except BaseException:
            self._unlink_files(file for _, _, file, _ in prepared)
            raise
        finally:
            self._release(pins)
        # Bodies every copy of which was a duplicate were never referenced.
        self._unlink_files(
            file
            for (_, _, file, _), stored in zip(prepared, outcome, strict=True)
            if not any(stored)
        )
        return outcome

    def _admit(
        self,
        conn: sqlite3.Connection,
        size: int,
        copies: Sequence[Copy],
        now: float,
        warn_percent: int | None,
    ) -> list[Stored]:
        """Per copy: the duplicate verdict, then the quota verdict for the fresh ones (which
        moves usage). A copy refused for quota gives its duplicate record back, so the MTA's
        retry is not suppressed as a duplicate of a copy that was never stored."""
        fresh = [self._claim_duplicate_slot(conn, c, now) for c in copies]
        refused = self._quota_admit(
            conn,
            [
                (c.mailbox_id, size + len(_stored_prefix(c))) if ok else None
                for c, ok in zip(copies, fresh, strict=True)
            ],
            warn_percent,
        )
        for c, r in zip(copies, refused, strict=True):
            if r is not None and self.duplicate_window is not None and c.message_id:
                conn.execute(
                    "DELETE FROM duplicates WHERE message_id = ? AND rcpt = ?",
                    (c.message_id, c.dedup_key),
                )
        return merge(fresh, refused)

    def _insert_copy(
        self,
        conn: sqlite3.Connection,
        copy: Copy,
        body_id: int,
        size: int,
        now: float,
        flags: int = 0,
    ) -> None:
        prefix = _stored_prefix(copy)
        uid = self._next_uid(conn, copy.mailbox_id)
        conn.execute(
            "INSERT INTO messages(mailbox_id, uid, body_id, size, flags, internal_date, "
            "x_real_to, individual, prefix) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                copy.mailbox_id,
                uid,
                body_id,
                size + len(prefix),
                flags,
                now,
                copy.x_real_to,
                copy.individual,
                prefix,
            ),
        )
        if copy.more_individuals:
            # Schema migration 7: the names after the first (the trigger there needs the
            # first in messages.individual to remove these with the message).
            assert copy.individual is not None
            conn.executemany(
                "INSERT OR IGNORE INTO message_individuals(mailbox_id, individual, uid) "
                "VALUES (?, ?, ?)",
                [(copy.mailbox_id, name, uid) for name in copy.more_individuals],
            )

    def _unlink_files(self, files: Iterable[str | None]) -> None:
        for rel in files:
            if rel is not None:
                with contextlib.suppress(OSError):
                    (self.bodies_dir / rel).unlink()

    def add_accounts(self, entries: Sequence[tuple[str, str, Credentials]]) -> None:
        """Create accounts, each with its INBOX, in one transaction: (domain, name, creds)."""
        with self._tx() as conn:
            for domain, name, creds in entries:
                did = self._domain_id(conn, domain)
                try:
                    cur = conn.execute(
                        "INSERT INTO accounts(domain_id, name, salt, iterations, stored_key, "
                        "server_key, shared_secret) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            did,
                            name.lower(),
                            creds.salt,
                            creds.iterations,
                            creds.stored_key,
                            creds.server_key,
                            creds.shared_secret,
                        ),
                    )
                except sqlite3.IntegrityError:
                    raise StoreError(f"account already exists: {name}@{domain}") from None
                assert cur.lastrowid is not None
                box_id = self._insert_mailbox(conn, cur.lastrowid, "INBOX")
                self._default_acl(conn, name, box_id)

    def import_messages(
        self,
        mailbox: Mailbox,
        messages: Iterable[tuple[bytes, int]],
        batch: int = 500,
        real_to: Callable[[bytes], tuple[str | None, tuple[str, ...]]] | None = None,
    ) -> int:
        """Bulk import (migration from Maildir/mbox): (octets, flag bits) per message, stored
        as-is with no Return-Path/X-Real-To added, in transactions of `batch` messages.
        `real_to(octets)` gives what to record from the message's own X-Real-To field: the
        addresses (joined by REAL_TO_SEPARATOR) and the individual names (issue 13)."""
        count = 0
        pending: list[tuple[bytes, int]] = []

        def flush() -> None:
            pins: list[int] = []
            files: list[str | None] = []
            try:
                with self._tx() as conn:
                    now = _now()
                    for raw, flags in pending:
                        size, stuffed, file = self._stored_body(raw, pins)
                        files.append(file)
                        body_id = self._insert_body(conn, size, stuffed, file, 1)
                        x_real_to, names = real_to(raw) if real_to is not None else (None, ())
                        copy = Copy(
                            mailbox.id,
                            b"",
                            x_real_to,
                            names[0] if names else None,
                            more_individuals=names[1:],
                        )
                        self._insert_copy(conn, copy, body_id, size, now, flags)
                        # Counted, never refused: a migration must not stop half way.
                        self._quota_move(conn, mailbox.id, [size])
            except BaseException:
                self._unlink_files(files)
                raise
            finally:
                self._release(pins)
            pending.clear()

        for item in messages:
            pending.append(item)
            count += 1
            if len(pending) >= batch:
                flush()
        if pending:
            flush()
        return count

    def _claim_duplicate_slot(self, conn: sqlite3.Connection, copy: Copy, now: float) -> bool:
        """Cyrus-style duplicate suppression: False if this Message-ID already reached this
        recipient within the window."""
        if self.duplicate_window is None or not copy.message_id or not copy.dedup_key:
            return True
        row = conn.execute(
            "SELECT seen_at FROM duplicates WHERE message_id = ? AND rcpt = ?",
            (copy.message_id, copy.dedup_key),
        ).fetchone()
        if row is not None and now - row[0] < self.duplicate_window:
            return False
        conn.execute(
            "INSERT OR REPLACE INTO duplicates(message_id, rcpt, seen_at) VALUES (?, ?, ?)",
            (copy.message_id, copy.dedup_key, now),
        )
        return True

    # --- POP sessions ---
    def open_maildrop(self, mailbox: Mailbox, individual: str | None) -> Snapshot:
        # The hold is registered (and published to the other workers) before the snapshot is
        # read, so no collector can judge a copy this snapshot holds by an older horizon.
        opened = _now()
        with self._lock:
            self._open[opened] += 1
            self._publish_hold()
        try:
            conn = self._conn()
            if individual is None:
                rows = conn.execute(
                    "SELECT uid, size FROM messages "
                    "WHERE mailbox_id = ? AND expunged_at IS NULL ORDER BY uid",
                    (mailbox.id,),
                ).fetchall()
            else:
                # Two indexed lookups: the first name of each message, then the others (schema
                # migration 7). A name is recorded once per message, so UNION ALL repeats none.
                rows = conn.execute(
                    "SELECT uid, size FROM messages INDEXED BY messages_individual "
                    "WHERE mailbox_id = ? AND individual = ? AND expunged_at IS NULL "
                    "UNION ALL SELECT m.uid, m.size FROM message_individuals x "
                    "JOIN messages m ON m.mailbox_id = x.mailbox_id AND m.uid = x.uid "
                    "WHERE x.mailbox_id = ? AND x.individual = ? AND m.expunged_at IS NULL "
                    "ORDER BY 1",
                    (mailbox.id, individual.lower(), mailbox.id, individual.lower()),
                ).fetchall()
        except BaseException:
            self._end_hold(opened)
            raise
        uids, sizes = zip(*rows, strict=True) if rows else ((), ())
        size_arr = array("q", sizes)
        return Snapshot(mailbox, array("q", uids), size_arr, opened, sum(size_arr))

    def read_message(self, snapshot: Snapshot, index: int) -> StoredMessage:
        found = self.read_messages(snapshot, [index]).get(index)
        if found is None:
            raise NotFound("message no longer exists")
        return found

    def read_messages(self, snapshot: Snapshot, indexes: Sequence[int]) -> dict[int, StoredMessage]:
        """read_message for several messages in one query (the shell reads ahead in windows,
        so a session RETRieving every message costs a few worker-thread hops, not one each)."""
        uids = {snapshot.uids[i]: i for i in indexes}
        rows = self._conn().execute(
            "SELECT m.uid, m.prefix, b.data, b.file, m.size FROM messages m "
            "JOIN bodies b ON b.id = m.body_id WHERE m.mailbox_id = ? "
            f"AND m.uid IN ({','.join('?' * len(uids))})",
            (snapshot.mailbox.id, *uids),
        )
        found: dict[int, StoredMessage] = {}
        for uid, prefix, data, file, size in rows:
            reader = (
                None if file is None else functools.partial(_file_chunks, self.bodies_dir / file)
            )
            found[uids[uid]] = StoredMessage(
                bytes(prefix), None if data is None else bytes(data), reader, size
            )
        return found

    def mark_seen(self, items: Sequence[tuple[int, int]]) -> None:
        """Set \\Seen on (mailbox_id, uid) pairs, many sessions' RETRs in one transaction.
        \\Seen is advisory state: NORMAL sync is still crash-consistent in WAL mode (only the
        last flag changes may be lost on power failure) and saves an fsync per batch."""
        conn = self._conn()
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._tx() as tx:
                tx.executemany(
                    f"UPDATE messages SET flags = flags | {SEEN} WHERE mailbox_id = ? AND uid = ?",
                    items,
                )
        finally:
            conn.execute("PRAGMA synchronous=FULL")

    def expunge(self, mailbox_id: int, uids: Sequence[int]) -> int:
        now = _now()
        count = 0
        with self._tx() as conn:
            for i in range(0, len(uids), _CHUNK):
                part = uids[i : i + _CHUNK]
                gone = conn.execute(
                    "UPDATE messages SET expunged_at = ? WHERE mailbox_id = ? "
                    f"AND expunged_at IS NULL AND uid IN ({','.join('?' * len(part))}) "
                    "RETURNING size",
                    (now, mailbox_id, *part),
                ).fetchall()
                # Usage drops here, with the expunge the user sees (issue 12), not later
                # when the collector removes the rows.
                self._quota_move(conn, mailbox_id, [-int(r[0]) for r in gone])
                count += len(gone)
        return count

    def close_maildrop(self, snapshot: Snapshot) -> None:
        self._end_hold(snapshot.opened_at)

    def _end_hold(self, opened: float) -> None:
        with self._lock:
            self._open[opened] -= 1
            if self._open[opened] <= 0:
                del self._open[opened]
            self._publish_hold()

    def _publish_hold(self) -> None:
        """Tell the other workers this process's oldest open snapshot (with self._lock held)."""
        if self._holds is not None:
            self._holds.publish(min(self._open) if self._open else None)

    # --- the collector (the safety mechanism) ---
    def open_session(self, mailbox: Mailbox, individual: str | None, account: str) -> OpenedSession:
        """The three calls in order: the embedded store has no network round trip to save."""
        snapshot = self.open_maildrop(mailbox, individual)
        try:
            pending = self.pending_alert(account) is not None
        except BaseException:
            self.close_maildrop(snapshot)
            raise
        return OpenedSession(snapshot, self.other_sessions(snapshot), pending)

    def other_sessions(self, snapshot: Snapshot) -> int:
        """The embedded store has no session registry: the process that serves it counts its
        own sessions (cgpop/login.py SessionCaps)."""
        return 0

    def collect(self) -> int:
        """Remove expunged copies and unreferenced bodies that no open session can still read.
        Only the serving processes call this: they alone know which sessions are open (each
        worker its own, the others' through the HoldBoard)."""
        with self._lock:
            horizon = min(self._open) if self._open else float("inf")
        others = None if self._holds is None else self._holds.oldest()
        horizon = min(horizon, _now(), float("inf") if others is None else others)
        files: list[str] = []
        with self._tx() as conn:
            conn.execute(
                "DELETE FROM messages WHERE expunged_at IS NOT NULL AND expunged_at < ?",
                (horizon,),
            )
            rows = conn.execute(
                "SELECT id, file FROM bodies WHERE refs = 0 AND zero_at < ?", (horizon,)
            ).fetchall()
            for i in range(0, len(rows), _CHUNK):
                part = [r[0] for r in rows[i : i + _CHUNK]]
                conn.execute(f"DELETE FROM bodies WHERE id IN ({','.join('?' * len(part))})", part)
            files = [r[1] for r in rows if r[1]]
        for rel in files:
            with contextlib.suppress(FileNotFoundError):
                (self.bodies_dir / rel).unlink()
        return len(rows)

    def remove_orphan_files(self) -> int:
        """At start: remove body files no row names (a crash between fsync and commit), but
        never one a live writer still holds (see the module docstring)."""
        known = {
            r[0] for r in self._conn().execute("SELECT file FROM bodies WHERE file IS NOT NULL")
        }
        removed = 0
        for path in self.bodies_dir.glob("*/*"):
            in_tmp = path.parent.name == "tmp"
            rel = f"{path.parent.name}/{path.name}"
            if not in_tmp and rel in known:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # renamed into place or removed by its writer meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a writer's transaction has not ended yet
                # Locked: its writer is done. It may have committed since `known` was read.
                if not in_tmp and self._body_file_named(rel):
                    continue
                path.unlink(missing_ok=True)
                removed += 1
            finally:
                os.close(fd)
        return removed

    def _body_file_named(self, rel: str) -> bool:
        row = self._conn().execute("SELECT 1 FROM bodies WHERE file = ?", (rel,)).fetchone()
        return row is not None

    def prune_duplicates(self) -> None:
        if self.duplicate_window is not None:
            with self._tx() as conn:
                conn.execute(
                    "DELETE FROM duplicates WHERE seen_at < ?", (_now() - self.duplicate_window,)
                )
