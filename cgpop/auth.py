"""Step 1 of the login policy (cgpop/login.py): resolve the name, check the secret, apply
rights, and open the maildrop.

Blocking (database, KDF): the asyncio shell runs these methods in a worker thread. An unknown
name, a wrong password and a missing mailbox give one and the same reply, after the same KDF
work, so accounts cannot be probed (RFC 3206 [AUTH] only for credential failures).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time

from accounts.acl import GROUP_PREFIX, Rights, effective_rights
from accounts.credentials import DUMMY_CREDENTIALS, Credentials, verify_password
from cgpop.access import AUTH_FAILED, Access, LoginResult
from cgpop.dircache import DirectoryCache
from cgpop.errors import Pop3Error
from cgpop.sasl.apop import apop_digest_ok
from cgpop.store.api import Account, Mailbox, Store
from router.loginname import parse_name
from router.resolve import resolve_login
from router.route import LoginTarget, RouteError

log = logging.getLogger("cgpop.auth")

__all__ = ["ACCOUNT_DISABLED", "AUTH_FAILED", "Authenticator", "VerifiedCache"]

ACCOUNT_DISABLED = Pop3Error("account disabled", "SYS/PERM")


class VerifiedCache:
    """Remembers, for `ttl` seconds, that a password was proved for an account, so a client
    that logs in every minute does not pay the KDF each time (Dovecot's auth_cache idea).

    Safe by construction: the key includes the account's StoredKey, so a password change
    invalidates it; the value is an HMAC of the password under a per-process random key, so
    memory holds no password; only successes are cached, so a wrong guess always costs the
    full KDF; and the cache is bounded.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._key = secrets.token_bytes(32)
        self._entries: dict[bytes, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def _tag(self, creds: Credentials, password: str) -> tuple[bytes, bytes]:
        slot = hashlib.sha256(creds.salt + creds.stored_key).digest()
        return slot, hmac.digest(self._key, password.encode("utf-8"), "sha256")

    def hit(self, creds: Credentials, password: str) -> bool:
        if self.ttl <= 0:
            return False
        slot, tag = self._tag(creds, password)
        with self._lock:
            entry = self._entries.get(slot)
        return (
            entry is not None and entry[1] > time.monotonic() and hmac.compare_digest(entry[0], tag)
        )

    def remember(self, creds: Credentials, password: str) -> None:
        if self.ttl <= 0:
            return
        slot, tag = self._tag(creds, password)
        now = time.monotonic()
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
                if len(self._entries) >= self.MAX_ENTRIES:
                    self._entries.clear()
            self._entries[slot] = (tag, now + self.ttl)


class Authenticator:
    def __init__(
        self, store: Store, *, admins: tuple[str, ...] = (), login_cache_ttl: float = 0.0
    ) -> None:
        self.store = store
        self.admins = frozenset(admins)
        self.verified = VerifiedCache(login_cache_ttl)
        self._lookups: DirectoryCache[tuple[LoginTarget | None, Account | None]] = DirectoryCache(
            lambda: self.store.directory_version()
        )
        self._rights: DirectoryCache[Rights] = DirectoryCache(
            lambda: self.store.directory_version()
        )
        self._mailboxes: DirectoryCache[Mailbox | None] = DirectoryCache(
            lambda: self.store.directory_version()
        )

    def check_password(self, creds: Credentials, password: str, known: bool) -> bool:
        """verify_password, through the cache for accounts that exist."""
        if known and self.verified.hit(creds, password):
            return True
        good = verify_password(creds, password)
        if good and known:
            self.verified.remember(creds, password)
        return good

    def lookup(
        self, login: str, default_domain: str, version: int | None = None
    ) -> tuple[LoginTarget | None, Account | None]:
        """Resolve a login name and load the account it authenticates as (cached until the
        directory changes; a password change is a directory change). `version`: the
        directory version this login read already (DirectoryCache.get)."""
        return self._lookups.get(
            (login, default_domain), lambda: self._lookup(login, default_domain), version
        )

    def _lookup(self, login: str, default_domain: str) -> tuple[LoginTarget | None, Account | None]:
        try:
            target = resolve_login(login, default_domain=default_domain, directory=self.store)
        except (RouteError, ValueError) as exc:
            log.info("login name %r does not resolve: %s", login[:100], exc)
            return None, None
        account = self.store.get_account(target.auth_domain, target.auth_account)
        return target, account

    def penalty_key(self, login: str, default_domain: str) -> str:
        """The account a login name tries, as the failed-login penalty counts it: the account
        it authenticates as after routing, so `alice%example.com`, `INBOX#alice` and
        `~alice/INBOX#alice` are one key. A name that resolves to nothing is spelt out by the
        grammar alone (the same unification), so unknown and known names behave alike."""
        # Cached whatever the directory version (no database round trip before the login's
        # turn): after a directory change the key may name the old account for one login.
        target = self._lookups.peek(
            (login, default_domain), lambda: self._lookup(login, default_domain)
        )[0]
        if target is not None:
            return target.auth_address
        try:
            parsed = parse_name(login)
        except RouteError:
            return login.casefold()[:320]
        domain = parsed.domain or default_domain.lower()
        return f"{parsed.account}@{domain}"

    def credentials_for(self, login: str, default_domain: str) -> Credentials | None:
        account = self.lookup(login, default_domain)[1]
        return None if account is None else account.credentials

    def password_login(
        self,
        login: str,
        default_domain: str,
        *,
        password: str | None = None,
        apop_digest: str | None = None,
        apop_banner: str = "",
    ) -> LoginResult:
        # One read of the directory version for every lookup of this login (issue 11: a
        # session opens with at most two database round trips, this and open_session).
        version = self.store.directory_version()
        target, account = self.lookup(login, default_domain, version)
        creds = account.credentials if account is not None else DUMMY_CREDENTIALS
        if password is not None:
            good = self.check_password(creds, password, account is not None)
        else:
            # APOP needs the plaintext-equivalent secret; an account without one fails like a
            # wrong digest (after comparing against a dummy, to keep the timing alike).
            secret = creds.shared_secret
            good = apop_digest_ok(apop_banner, secret or "\x00no-secret", apop_digest or "")
            good = good and secret is not None
        if not good or account is None or target is None:
            return LoginResult(error=AUTH_FAILED)
        return self.open(target, account, version)

    def sasl_credentials(
        self, authcid: str, default_domain: str, password: str | None
    ) -> tuple[Credentials | None, bool | None]:
        """For a SASL mechanism's NeedCredentials: the stored keys of the account the name
        authenticates as, and when a password came with it (PLAIN, LOGIN) whether it is right
        (KDF work is done even for unknown names, as in password_login)."""
        creds = self.credentials_for(authcid, default_domain)
        if password is None:
            return creds, None
        good = self.check_password(creds or DUMMY_CREDENTIALS, password, creds is not None)
        return creds, good and creds is not None

    def open_login(self, login: str, default_domain: str) -> LoginResult:
        """After SASL proved the credentials of `login` (or an admin's, for an authorization
        identity): resolve it and open the maildrop it names."""
        version = self.store.directory_version()
        target, account = self.lookup(login, default_domain, version)
        if target is None or account is None:
            return LoginResult(error=AUTH_FAILED)
        return self.open(target, account, version)

    def is_admin(self, login: str, default_domain: str) -> bool:
        target = self.lookup(login, default_domain)[0]
        return target is not None and target.auth_address in self.admins

    def rights(self, mailbox: Mailbox, user: str, version: int | None = None) -> Rights:
        """What `user` (an authenticated address) may do on `mailbox` (Cyrus semantics),
        cached until the directory changes."""
        return self._rights.get(
            (mailbox.id, user), lambda: self._compute_rights(mailbox, user), version
        )

    def _compute_rights(self, mailbox: Mailbox, user: str) -> Rights:
        entries = self.store.acl_entries(mailbox)
        # Group membership matters only when an entry names a group: skip the lookup otherwise.
        groups = (
            self.store.groups_of(user)
            if any(e.identifier.startswith(GROUP_PREFIX) for e in entries)
            else frozenset()
        )
        return effective_rights(
            entries,
            user=user,
            groups=groups,
            is_owner=mailbox.owner == user,
            is_admin=user in self.admins,
        )

    def open(
        self, target: LoginTarget, account: Account, version: int | None = None
    ) -> LoginResult:
        """Credentials are proved: open the maildrop the name picked, if rights allow.
        `version`: the directory version the login's lookups were made at."""
        if "pop" in account.disabled:
            # Issue 13: after the credentials, so only their holder learns of the suspension;
            # not a failed login (no penalty), and PERM: retrying will not help.
            log.info("login %s refused: the pop service is disabled", account.address)
            return LoginResult(error=ACCOUNT_DISABLED, counts_as_failure=False)
        route = target.route
        mailbox = self._mailboxes.get(
            (route.domain, route.account, route.mailbox),
            lambda: self.store.get_mailbox(route.domain, route.account, route.mailbox),
            version,
        )
        if mailbox is None:
            log.info("login %s: no mailbox %s#%s", account.address, route.mailbox, route.address)
            return LoginResult(error=AUTH_FAILED)
        rights = self.rights(mailbox, account.address, version)
        # POP needs `r` to open a maildrop. Refused like a bad password, so the reply does not
        # tell whether the mailbox exists (issue 3: no probing).
        if "r" not in rights:
            log.info(
                "login %s: no r right on %s#%s (has %r)",
                account.address,
                route.mailbox,
                route.address,
                str(rights),
            )
            return LoginResult(error=AUTH_FAILED)
        # The maildrop, the account's sessions on other nodes and whether an alert waits: one
        # round trip on PostgreSQL (issue 11).
        opened = self.store.open_session(mailbox, route.individual, account.address)
        return LoginResult(
            access=Access(
                account.address,
                opened.snapshot,
                may_seen="s" in rights,
                may_delete="t" in rights,
                may_expunge="e" in rights,
                alert_pending=opened.alert_pending,
                others=opened.others,
                login_address=target.login_address,
                may_submit="xtnd" not in account.disabled,
            )
        )
