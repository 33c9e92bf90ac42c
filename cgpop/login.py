"""The login policy: whether a login is admitted, decided in one place and in this order.

1. Credentials, routing and rights (`Checks`, cgpop/auth.py; blocking, one reader hop): the
   login name resolves, the password, APOP digest or SASL proof is right, the mailbox the name
   picks exists and gives `r`. The same hop opens the maildrop and notes whether an alert is
   pending, so an ordinary login costs one hop.
2. A failure costs the failed-login delay, growing per peer and per account (cgpop/penalty.py);
   every failure gets the same reply, so accounts cannot be probed.
3. A pending CommuniGate alert is taken (writer, once per alert and account) and fails the login
   with its text (SYS/TEMP, not AUTH, so clients show it instead of asking for a password).
4. The per-account session cap (`[pop3] max_per_account`).

The per-IP cap (`[pop3] max_per_ip`) applies earlier, when the connection is accepted
(`SessionCaps.enter_peer`), before anything is read from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from accounts.credentials import Credentials
from cgpop.blocking import Run
from cgpop.errors import Pop3Error
from cgpop.logs import SessionLog
from cgpop.penalty import Penalty
from cgpop.store.api import Alert, Snapshot

AUTH_FAILED = Pop3Error("authentication failed", "AUTH")
TOO_MANY_SESSIONS = Pop3Error("too many sessions for this account, try later", "SYS/TEMP")


@dataclass(frozen=True, slots=True)
class Access:
    """What a login opened and what its rights allow (Cyrus ACL letters)."""

    account: str  # authenticated address
    snapshot: Snapshot
    may_seen: bool = True  # `s`
    may_delete: bool = True  # `t`
    may_expunge: bool = True  # `e`
    # A CommuniGate alert waits for this account (step 3).
    alert_pending: bool = False
    # Issue 13: the address part of the login name (routes to `account`), and whether the
    # account's XTND XMIT service is enabled.
    login_address: str = ""
    may_submit: bool = True


@dataclass(frozen=True, slots=True)
class LoginResult:
    """Admitted with `access`, or refused with `error`."""

    access: Access | None = None
    error: Pop3Error | None = None
    # True when the refusal counts against the failed-login budget (bad credentials).
    counts_as_failure: bool = True


class Checks(Protocol):
    """Step 1 (blocking): cgpop.auth.Authenticator."""

    def password_login(
        self,
        login: str,
        default_domain: str,
        *,
        password: str | None = None,
        apop_digest: str | None = None,
        apop_banner: str = "",
    ) -> LoginResult: ...

    def open_login(self, login: str, default_domain: str) -> LoginResult: ...

    def is_admin(self, login: str, default_domain: str) -> bool: ...

    def sasl_credentials(
        self, authcid: str, default_domain: str, password: str | None
    ) -> tuple[Credentials | None, bool | None]: ...


class SessionCaps:
    """Open sessions per peer address and per account, against their caps."""

    def __init__(self, max_per_ip: int, max_per_account: int) -> None:
        self.max_per_ip, self.max_per_account = max_per_ip, max_per_account
        self.per_ip: dict[str, int] = {}
        self.per_account: dict[str, int] = {}

    def set_limits(self, max_per_ip: int, max_per_account: int) -> None:
        """New caps (a reload): sessions already open stay, the next ones see them."""
        self.max_per_ip, self.max_per_account = max_per_ip, max_per_account

    def enter_peer(self, ip: str) -> bool:
        return _enter(self.per_ip, ip, self.max_per_ip)

    def leave_peer(self, ip: str) -> None:
        _leave(self.per_ip, ip)

    def enter_account(self, account: str) -> bool:
        return _enter(self.per_account, account, self.max_per_account)

    def leave_account(self, account: str) -> None:
        _leave(self.per_account, account)


def _enter(counts: dict[str, int], key: str, cap: int) -> bool:
    if counts.get(key, 0) >= cap:
        return False
    counts[key] = counts.get(key, 0) + 1
    return True


def _leave(counts: dict[str, int], key: str) -> None:
    counts[key] -= 1
    if not counts[key]:
        del counts[key]


class LoginPolicy:
    """`read` and `write` run blocking work off the event loop (cgpop/blocking.py)."""

    def __init__(
        self,
        checks: Checks,
        *,
        read: Run,
        write: Run,
        take_alert: Callable[[str], Alert | None],
        close_maildrop: Callable[[Snapshot], None],
        penalty: Penalty,
        caps: SessionCaps,
    ) -> None:
        self.checks, self.read, self.write = checks, read, write
        self.take_alert, self.close_maildrop = take_alert, close_maildrop
        self.penalty, self.caps = penalty, caps

    async def sasl_credentials(
        self, authcid: str, domain: str, password: str | None
    ) -> tuple[Credentials | None, bool | None]:
        """For a SASL mechanism: the stored keys of `authcid` (and whether `password` is
        right, when the mechanism carries one)."""
        found: tuple[Credentials | None, bool | None] = await self.read(
            self.checks.sasl_credentials, authcid, domain, password
        )
        return found

    async def password(
        self,
        login: str,
        domain: str,
        peer_ip: str,
        slog: SessionLog,
        *,
        password: str | None,
        apop_digest: str | None,
        apop_banner: str,
    ) -> LoginResult:
        """USER/PASS or APOP."""
        checked: LoginResult = await self.read(
            lambda: self.checks.password_login(
                login,
                domain,
                password=password,
                apop_digest=apop_digest,
                apop_banner=apop_banner,
            )
        )
        return await self.decide(checked, login, peer_ip, slog)

    async def sasl(
        self, login: str, proven_by: str | None, domain: str, peer_ip: str, slog: SessionLog
    ) -> LoginResult:
        """SASL proved the credentials of `proven_by` (when set: an admin acting for `login`,
        RFC 4616 authzid) or of `login`."""
        checked: LoginResult
        if proven_by is not None and not await self.read(self.checks.is_admin, proven_by, domain):
            slog.info("%r may not log in as %r", proven_by[:100], login[:100])
            checked = LoginResult(error=AUTH_FAILED)
        else:
            checked = await self.read(self.checks.open_login, login, domain)
        return await self.decide(checked, proven_by or login, peer_ip, slog)

    async def decide(
        self, checked: LoginResult, login: str, peer_ip: str, slog: SessionLog
    ) -> LoginResult:
        """Steps 2 to 4 for the outcome of step 1 (also for a SASL exchange that failed)."""
        key = login.lower()[:320]  # the penalty's per-account key, bounded
        access = checked.access
        # 2. The failed-login delay.
        if access is None:
            slog.info("login failed for %r", login[:100])
            if checked.counts_as_failure:
                self.penalty.record_failure(peer_ip, key)
                # A growing delay per peer and per account slows guessing; the reply is the
                # same whatever failed.
                await asyncio.sleep(self.penalty.delay_for(peer_ip, key))
            return checked
        self.penalty.record_success(peer_ip, key)
        account = access.account
        # 3. An alert shown instead of the login.
        if access.alert_pending:
            alert = await self.write(self.take_alert, account)
            if alert is not None:
                self.close_maildrop(access.snapshot)
                slog.info("login %s: alert %d delivered", account, alert.id)
                return LoginResult(error=Pop3Error(alert.text, "SYS/TEMP"), counts_as_failure=False)
        # 4. The per-account cap.
        if not self.caps.enter_account(account):
            self.close_maildrop(access.snapshot)
            slog.warning("login %s refused: per-account session limit", account)
            return LoginResult(error=TOO_MANY_SESSIONS, counts_as_failure=False)
        snap = access.snapshot
        slog.info("login %s mailbox %s (%d messages)", account, snap.mailbox.name, len(snap))
        return checked

    def logout(self, access: Access) -> None:
        """The session of an admitted login ended: its maildrop closes, its slot frees."""
        self.caps.leave_account(access.account)
        self.close_maildrop(access.snapshot)
