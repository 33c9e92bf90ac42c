"""The directory in SQL both backends share: domains and their aliases, routes, accounts and
their services, mailboxes, ACLs and groups (the tables' meaning is in cgpop/store/api.py).

Written once in the shared spelling of cgpop/store/sql_access.py. What differs stays in the
backend, behind three hooks: how a new mailbox's UIDVALIDITY is drawn (`_next_uidvalidity`),
how a removed mailbox's copies are expunged (`_drop_mailbox`: SQLite stamps a time, PostgreSQL
a transaction id, each with its own quota bookkeeping), and how a message list is read
(`list_messages`, not here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from accounts.acl import DEFAULT_PUBLIC_ACL, AclEntry, Rights
from accounts.credentials import Credentials
from cgpop.store.api import SERVICES, Account, Mailbox, NotFound, StoreError
from cgpop.store.naming import rename_plan
from cgpop.store.sql_access import SqlAccess, SqlConn

# The account whose new mailboxes start with DEFAULT_PUBLIC_ACL (CommuniGate/Cyrus "public").
PUBLIC_ACCOUNT = "public"
# The accounts of the directory with their domains (`list_accounts`, `disabled_services`).
# The login path's lookups spell it out instead: a literal is one string object, hashed once
# (the dialect's lookup) where an f-string builds a new one per call.
_ACCOUNTS = "FROM accounts a JOIN domains d ON d.id = a.domain_id"
_BY_ADDRESS = ' ORDER BY d.name COLLATE "C", a.name COLLATE "C"'


class SqlDirectory(SqlAccess):
    if TYPE_CHECKING:
        # The backend's hooks; `conn` is its own connection type (inside its transaction).
        def _next_uidvalidity(self, conn: Any) -> int: ...

        def _drop_mailbox(self, conn: Any, mailbox_id: int) -> None: ...

    # --- domains ---
    def add_domain(self, name: str) -> None:
        with self._tx() as conn:
            if self._run(
                conn, "SELECT 1 FROM domain_aliases WHERE alias = ?", (name.lower(),)
            ).fetchone():
                raise StoreError(f"{name} is already a domain alias")
            inserted = self._run(
                conn,
                "INSERT INTO domains(name) VALUES (?) ON CONFLICT DO NOTHING RETURNING id",
                (name.lower(),),
            ).fetchone()
            if inserted is None:
                raise StoreError(f"domain already exists: {name}")

    def remove_domain(self, name: str) -> None:
        with self._tx() as conn:
            did = self._domain_id(conn, name)
            (count,) = self._run(
                conn, "SELECT count(*) FROM accounts WHERE domain_id = ?", (did,)
            ).fetchone()
            if count:
                raise StoreError(f"domain {name} still has {count} account(s); remove them first")
            self._run(conn, "DELETE FROM domains WHERE id = ?", (did,))

    def list_domains(self) -> list[str]:
        return [str(r[0]) for r in self._rows('SELECT name FROM domains ORDER BY name COLLATE "C"')]

    def domain_exists(self, name: str) -> bool:
        return self._row("SELECT 1 FROM domains WHERE name = ?", (name.lower(),)) is not None

    def directory_version(self) -> int:
        """Moves with every change to domains, aliases, accounts, mailboxes, routes, ACLs and
        groups, from any process or node (triggers: schema migration 6, pg_schema)."""
        return int(self._row("SELECT v FROM directory_version")[0])

    # --- the router's view (router.resolve.Directory) ---
    def canonical_domain(self, name: str) -> str | None:
        name = name.lower()
        row = self._row(
            "SELECT name FROM domains WHERE name = ? UNION ALL "
            "SELECT d.name FROM domain_aliases a JOIN domains d ON d.id = a.domain_id "
            "WHERE a.alias = ?",
            (name, name),
        )
        return None if row is None else str(row[0])

    def account_exists(self, domain: str, account: str) -> bool:
        row = self._row(
            "SELECT 1 FROM accounts a JOIN domains d ON d.id = a.domain_id "
            "WHERE d.name = ? AND a.name = ?",
            (domain.lower(), account.lower()),
        )
        return row is not None

    def route_target(self, pattern: str) -> str | None:
        row = self._row("SELECT target FROM routes WHERE pattern = ?", (pattern,))
        return None if row is None else str(row[0])

    def add_route(self, pattern: str, target: str) -> None:
        row = self._write_row(
            "INSERT INTO routes(pattern, target) VALUES (?, ?) ON CONFLICT DO NOTHING RETURNING 1",
            (pattern, target),
        )
        if row is None:
            raise StoreError(f"a route for {pattern} already exists")

    def remove_route(self, pattern: str) -> None:
        if self._write_row("DELETE FROM routes WHERE pattern = ? RETURNING 1", (pattern,)) is None:
            raise NotFound(f"no route for {pattern}")

    def list_routes(self) -> list[tuple[str, str]]:
        rows = self._rows("SELECT pattern, target FROM routes ORDER BY pattern")
        return [(str(p), str(t)) for p, t in rows]

    def add_domain_alias(self, alias: str, domain: str) -> None:
        with self._tx() as conn:
            did = self._domain_id(conn, domain)
            alias = alias.lower()
            if self._run(conn, "SELECT 1 FROM domains WHERE name = ?", (alias,)).fetchone():
                raise StoreError(f"{alias} is a domain, not a free alias name")
            row = self._run(
                conn,
                "INSERT INTO domain_aliases(alias, domain_id) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING RETURNING 1",
                (alias, did),
            ).fetchone()
            if row is None:
                raise StoreError(f"alias already exists: {alias}")

    def remove_domain_alias(self, alias: str, domain: str) -> None:
        with self._tx() as conn:
            did = self._domain_id(conn, domain)
            row = self._run(
                conn,
                "DELETE FROM domain_aliases WHERE alias = ? AND domain_id = ? RETURNING 1",
                (alias.lower(), did),
            ).fetchone()
            if row is None:
                raise NotFound(f"no alias {alias} for {domain}")

    def list_domain_aliases(self) -> list[tuple[str, str]]:
        rows = self._rows(
            "SELECT a.alias, d.name FROM domain_aliases a JOIN domains d ON d.id = a.domain_id "
            "ORDER BY a.alias"
        )
        return [(str(a), str(d)) for a, d in rows]

    # --- accounts ---
    def _account_id(self, conn: SqlConn, domain: str, name: str) -> int:
        row = self._run(
            conn,
            "SELECT a.id FROM accounts a JOIN domains d ON d.id = a.domain_id "
            "WHERE d.name = ? AND a.name = ?",
            (domain.lower(), name.lower()),
        ).fetchone()
        if row is None:
            raise NotFound(f"no such account: {name}@{domain}")
        return int(row[0])

    def add_account(self, domain: str, name: str, creds: Credentials) -> None:
        self.add_accounts([(domain, name, creds)])

    def add_accounts(self, entries: Sequence[tuple[str, str, Credentials]]) -> None:
        """Create accounts, each with its INBOX, in one transaction: (domain, name, creds)."""
        with self._tx() as conn:
            for domain, name, creds in entries:
                did = self._domain_id(conn, domain)
                row = self._run(
                    conn,
                    "INSERT INTO accounts(domain_id, name, salt, iterations, stored_key, "
                    "server_key, shared_secret) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING RETURNING id",
                    (
                        did,
                        name.lower(),
                        creds.salt,
                        creds.iterations,
                        creds.stored_key,
                        creds.server_key,
                        creds.shared_secret,
                    ),
                ).fetchone()
                if row is None:
                    raise StoreError(f"account already exists: {name}@{domain}")
                box_id = self._insert_mailbox(conn, int(row[0]), "INBOX")
                self._default_acl(conn, name, box_id)

    def set_credentials(self, domain: str, name: str, creds: Credentials) -> None:
        with self._tx() as conn:
            aid = self._account_id(conn, domain, name)
            self._run(
                conn,
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
            rows = self._run(conn, "SELECT id FROM mailboxes WHERE account_id = ?", (aid,))
            for (mid,) in rows.fetchall():
                self._drop_mailbox(conn, int(mid))
            self._run(conn, "DELETE FROM accounts WHERE id = ?", (aid,))
            # A later account of the same name must not inherit this one's rights.
            address = f"{name.lower()}@{domain.lower()}"
            self._run(conn, "DELETE FROM acl WHERE identifier = ?", (address,))
            self._run(conn, "DELETE FROM group_members WHERE member = ?", (address,))

    def list_accounts(self, domain: str | None = None) -> list[str]:
        return [str(r[0]) for r in self._addresses("a.name || '@' || d.name", domain)]

    def _addresses(self, columns: str, domain: str | None) -> list[Any]:
        """`columns` of every account, or of `domain`'s (NotFound if there is no such
        domain), in address order."""
        with self._reader() as conn:
            if domain is None:
                return self._run(conn, f"SELECT {columns} {_ACCOUNTS}{_BY_ADDRESS}").fetchall()
            self._domain_id(conn, domain)
            return self._run(
                conn,
                f"SELECT {columns} {_ACCOUNTS} WHERE d.name = ?{_BY_ADDRESS}",
                (domain.lower(),),
            ).fetchall()

    def get_account(self, domain: str, name: str) -> Account | None:
        row = self._row(
            "SELECT a.id, a.salt, a.iterations, a.stored_key, a.server_key, a.shared_secret, "
            "a.pop_enabled, a.xtnd_enabled FROM accounts a JOIN domains d ON d.id = a.domain_id "
            "WHERE d.name = ? AND a.name = ?",
            (domain.lower(), name.lower()),
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
                self._run(conn, f"UPDATE accounts SET {column} = ? WHERE id = ?", (enabled, aid))

    def disabled_services(self, domain: str | None = None) -> dict[str, frozenset[str]]:
        rows = self._addresses("a.name || '@' || d.name, a.pop_enabled, a.xtnd_enabled", domain)
        return {
            str(address): frozenset(s for s, on in zip(SERVICES, flags, strict=True) if not on)
            for address, *flags in rows
        }

    # --- mailboxes ---
    def _insert_mailbox(self, conn: SqlConn, account_id: int, name: str) -> int:
        # uidvalidity comes from a persistent counter, never the clock alone: it never
        # repeats, so a re-created mailbox never repeats a UIDL.
        row = self._run(
            conn,
            "INSERT INTO mailboxes(account_id, name, uidvalidity) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING RETURNING id",
            (account_id, name, self._next_uidvalidity(conn)),
        ).fetchone()
        if row is None:
            raise StoreError(f"mailbox already exists: {name}")
        return int(row[0])

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
            row = self._run(
                conn, "SELECT id FROM mailboxes WHERE account_id = ? AND name = ?", (aid, mailbox)
            ).fetchone()
            if row is None:
                raise NotFound(f"no such mailbox: {mailbox}")
            self._drop_mailbox(conn, int(row[0]))

    def rename_mailbox(self, domain: str, account: str, old: str, new: str) -> None:
        with self._tx() as conn:
            aid = self._account_id(conn, domain, account)
            rows = self._run(
                conn, "SELECT id, name FROM mailboxes WHERE account_id = ?", (aid,)
            ).fetchall()
            plan = rename_plan(((int(i), str(n)) for i, n in rows), old, new)
            for box_id, name in plan:
                self._run(conn, "UPDATE mailboxes SET name = ? WHERE id = ?", (name, box_id))

    def list_mailboxes(self, domain: str, account: str) -> list[str]:
        with self._reader() as conn:
            aid = self._account_id(conn, domain, account)
            rows = self._run(
                conn, "SELECT name FROM mailboxes WHERE account_id = ? ORDER BY name", (aid,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def get_mailbox(self, domain: str, account: str, mailbox: str) -> Mailbox | None:
        row = self._row(
            "SELECT m.id, m.account_id, m.uidvalidity FROM mailboxes m "
            "JOIN accounts a ON a.id = m.account_id JOIN domains d ON d.id = a.domain_id "
            "WHERE d.name = ? AND a.name = ? AND m.name = ?",
            (domain.lower(), account.lower(), mailbox),
        )
        if row is None:
            return None
        owner = f"{account.lower()}@{domain.lower()}"
        return Mailbox(int(row[0]), int(row[1]), owner, mailbox, int(row[2]))

    def message_flags(self, mailbox_id: int, uid: int) -> int | None:
        row = self._row(
            "SELECT flags FROM messages WHERE mailbox_id = ? AND uid = ?", (mailbox_id, uid)
        )
        return None if row is None else int(row[0])

    # --- ACL and groups (accounts/acl.py has the rights arithmetic) ---
    def _default_acl(self, conn: SqlConn, account: str, mailbox_id: int) -> None:
        # Issue 3: every new mailbox of an account named `public` (in any domain) is readable
        # by everybody until its owner or an admin says otherwise.
        if account.lower() == PUBLIC_ACCOUNT:
            self._many(
                conn,
                "INSERT INTO acl(mailbox_id, identifier, negative, rights) VALUES (?, ?, ?, ?)",
                [(mailbox_id, e.identifier, e.negative, str(e.rights)) for e in DEFAULT_PUBLIC_ACL],
            )

    def _inherit_acl(self, conn: SqlConn, account_id: int, mailbox: str, mailbox_id: int) -> bool:
        """Issue 13, Cyrus's rule: a new mailbox starts with a copy of its parent's ACL, the
        parent being the nearest existing ancestor in the `/` hierarchy (`a/b/c` looks at
        `a/b`, then `a`). False when it has none (the caller applies the defaults). A
        top-level mailbox has no parent here: INBOX is its sibling, as in CommuniGate's
        folders, so sharing INBOX does not share every new top-level mailbox (Cyrus nests
        them under INBOX, which would)."""
        parts = mailbox.split("/")
        for cut in range(len(parts) - 1, 0, -1):
            row = self._run(
                conn,
                "SELECT id FROM mailboxes WHERE account_id = ? AND name = ?",
                (account_id, "/".join(parts[:cut])),
            ).fetchone()
            if row is not None:
                self._run(
                    conn,
                    "INSERT INTO acl(mailbox_id, identifier, negative, rights) "
                    "SELECT ?, identifier, negative, rights FROM acl WHERE mailbox_id = ?",
                    (mailbox_id, int(row[0])),
                )
                return True
        return False

    def acl_entries(self, mailbox: Mailbox) -> list[AclEntry]:
        """The mailbox's ACL, positive entries first, each group sorted by identifier."""
        rows = self._rows(
            "SELECT identifier, negative, rights FROM acl WHERE mailbox_id = ? "
            'ORDER BY negative, identifier COLLATE "C"',
            (mailbox.id,),
        )
        return [AclEntry(str(i), Rights.parse(str(r)), bool(n)) for i, n, r in rows]

    def get_acl_entry(
        self, mailbox: Mailbox, identifier: str, negative: bool = False
    ) -> AclEntry | None:
        row = self._row(
            "SELECT rights FROM acl WHERE mailbox_id = ? AND identifier = ? AND negative = ?",
            (mailbox.id, identifier, negative),
        )
        return None if row is None else AclEntry(identifier, Rights.parse(str(row[0])), negative)

    def set_acl_entry(self, mailbox: Mailbox, entry: AclEntry) -> None:
        """Add or replace the entry for (identifier, negative). Empty rights remove it, as
        Cyrus's SETACL with an empty rights string does (RFC 4314 section 3.1)."""
        if not entry.rights:
            with contextlib.suppress(NotFound):
                self.delete_acl_entry(mailbox, entry.identifier, entry.negative)
            return
        try:
            self._write_row(
                "INSERT INTO acl(mailbox_id, identifier, negative, rights) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (mailbox_id, negative, identifier) "
                "DO UPDATE SET rights = excluded.rights RETURNING 1",
                (mailbox.id, entry.identifier, entry.negative, str(entry.rights)),
            )
        except self._DIALECT.foreign_key_error:  # the mailbox was removed
            raise NotFound(f"no such mailbox: {mailbox.name}") from None

    def delete_acl_entry(self, mailbox: Mailbox, identifier: str, negative: bool = False) -> None:
        row = self._write_row(
            "DELETE FROM acl WHERE mailbox_id = ? AND identifier = ? AND negative = ? RETURNING 1",
            (mailbox.id, identifier, negative),
        )
        if row is None:
            sign = "-" if negative else ""
            raise NotFound(f"no ACL entry for {sign}{identifier} on {mailbox.name}")

    def add_group_member(self, group: str, member: str) -> None:
        row = self._write_row(
            "INSERT INTO group_members(group_name, member) VALUES (?, ?) "
            "ON CONFLICT DO NOTHING RETURNING 1",
            (group.lower(), member.lower()),
        )
        if row is None:
            raise StoreError(f"{member} is already in group {group}")

    def remove_group_member(self, group: str, member: str) -> None:
        row = self._write_row(
            "DELETE FROM group_members WHERE group_name = ? AND member = ? RETURNING 1",
            (group.lower(), member.lower()),
        )
        if row is None:
            raise NotFound(f"{member} is not in group {group}")

    def list_group_members(self, group: str | None = None) -> list[tuple[str, str]]:
        """(group, member) pairs, sorted; one group's only when `group` is given."""
        sql = "SELECT group_name, member FROM group_members"
        order = ' ORDER BY group_name COLLATE "C", member COLLATE "C"'
        if group is None:
            rows = self._rows(sql + order)
        else:
            rows = self._rows(sql + " WHERE group_name = ?" + order, (group.lower(),))
        return [(str(g), str(m)) for g, m in rows]

    def groups_of(self, address: str) -> frozenset[str]:
        rows = self._rows(
            "SELECT group_name FROM group_members WHERE member = ?", (address.lower(),)
        )
        return frozenset(str(r[0]) for r in rows)
