"""Turning a login into an open maildrop: resolve the name, check the secret, apply rights.

Blocking (database, KDF): the asyncio shell runs these methods in a worker thread. An unknown
name, a wrong password and a missing mailbox give one and the same reply, after the same KDF
work, so accounts cannot be probed (RFC 3206 [AUTH] only for credential failures).
"""

from __future__ import annotations

import logging

from accounts.credentials import DUMMY_CREDENTIALS, Credentials, verify_password
from cgpop.errors import Pop3Error
from cgpop.pop3.events import Grant, LoginOutcome
from cgpop.sasl.apop import apop_digest_ok
from cgpop.store.api import Account, Store
from router.resolve import resolve_login
from router.route import LoginTarget, RouteError

log = logging.getLogger("cgpop.auth")

AUTH_FAILED = Pop3Error("authentication failed", "AUTH")


class Authenticator:
    def __init__(self, store: Store, *, admins: tuple[str, ...] = ()) -> None:
        self.store = store
        self.admins = frozenset(admins)

    def lookup(self, login: str, default_domain: str) -> tuple[LoginTarget | None, Account | None]:
        try:
            target = resolve_login(login, default_domain=default_domain, directory=self.store)
        except (RouteError, ValueError) as exc:
            log.info("login name %r does not resolve: %s", login[:100], exc)
            return None, None
        account = self.store.get_account(target.auth_domain, target.auth_account)
        return target, account

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
    ) -> LoginOutcome:
        target, account = self.lookup(login, default_domain)
        creds = account.credentials if account is not None else DUMMY_CREDENTIALS
        if password is not None:
            good = verify_password(creds, password)
        else:
            # APOP needs the plaintext-equivalent secret; an account without one fails like a
            # wrong digest (after comparing against a dummy, to keep the timing alike).
            secret = creds.shared_secret
            good = apop_digest_ok(apop_banner, secret or "\x00no-secret", apop_digest or "")
            good = good and secret is not None
        if not good or account is None or target is None:
            return LoginOutcome(error=AUTH_FAILED)
        return self.open(target, account)

    def open(self, target: LoginTarget, account: Account) -> LoginOutcome:
        """Credentials are proved: open the maildrop the name picked, if rights allow."""
        route = target.route
        mailbox = self.store.get_mailbox(route.domain, route.account, route.mailbox)
        if mailbox is None:
            log.info("login %s: no mailbox %s#%s", account.address, route.mailbox, route.address)
            return LoginOutcome(error=AUTH_FAILED)
        owner = route.address == account.address
        if not owner:
            # Foreign and public mailboxes need ACLs (issue 3); until then only owners read.
            return LoginOutcome(error=AUTH_FAILED)
        snapshot = self.store.open_maildrop(mailbox, route.individual)
        return LoginOutcome(grant=Grant(account.address, snapshot))
