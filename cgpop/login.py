"""The login policy: whether a login is admitted, decided in one place and in this order.

0. One check at a time per (peer, account) pair, however many connections (cgpop/loginturn.py);
   the account is the one the name resolves to (`penalty_key`, one reader hop per name and
   session).
1. Credentials, routing and rights (`Checks`, cgpop/auth.py; blocking, one reader hop): the
   login name resolves, the password, APOP digest or SASL proof is right, the mailbox the name
   picks exists and gives `r`. The same hop opens the maildrop and notes whether an alert is
   pending, so no further hop is needed for an ordinary login.
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
from typing import Protocol

from accounts.credentials import Credentials
from cgpop.access import AUTH_FAILED, Access, LoginResult
from cgpop.blocking import Run
from cgpop.errors import Pop3Error
from cgpop.loginturn import login_turn
from cgpop.logs import SessionLog
from cgpop.penalty import Penalty
from cgpop.store.api import Alert, Snapshot

TOO_MANY_SESSIONS = Pop3Error("too many sessions for this account, try later", "SYS/TEMP")


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

    def penalty_key(self, login: str, default_domain: str) -> str: ...

    def sasl_credentials(
        self, authcid: str, default_domain: str, password: str | None
    ) -> tuple[Credentials | None, bool | None]: ...


class Counts(Protocol):
    """Counts per key against a limit: in this process (LocalCounts), or over every worker of
    the server (cgpop.shared.WorkerCounts, `[server] workers`)."""

    def try_add(self, key: str, limit: int | None) -> bool: ...
    def remove(self, key: str) -> None: ...
    def get(self, key: str) -> int: ...


class LocalCounts:
    """Counts of one process."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def try_add(self, key: str, limit: int | None) -> bool:
        if limit is not None and self.counts.get(key, 0) >= limit:
            return False
        self.counts[key] = self.counts.get(key, 0) + 1
        return True

    def remove(self, key: str) -> None:
        self.counts[key] -= 1
        if not self.counts[key]:
            del self.counts[key]

    def get(self, key: str) -> int:
        return self.counts.get(key, 0)


class SessionCaps:
    """Open connections in all, per peer address and per account, against their caps; with
    `[server] workers`, `counts` is shared by every worker, so the caps hold for the server."""

    def __init__(self, max_per_ip: int, max_per_account: int, counts: Counts | None = None) -> None:
        self.max_per_ip, self.max_per_account = max_per_ip, max_per_account
        self.counts: Counts = LocalCounts() if counts is None else counts

    def set_limits(self, max_per_ip: int, max_per_account: int) -> None:
        """New caps (a reload): sessions already open stay, the next ones see them."""
        self.max_per_ip, self.max_per_account = max_per_ip, max_per_account

    def enter_channel(self, max_channels: int) -> bool:
        return self.counts.try_add("channels", max_channels)

    def leave_channel(self) -> None:
        self.counts.remove("channels")

    def enter_peer(self, ip: str) -> bool:
        return self.counts.try_add(f"ip {ip}", self.max_per_ip)

    def leave_peer(self, ip: str) -> None:
        self.counts.remove(f"ip {ip}")

    def enter_account(self, account: str) -> bool:
        return self.counts.try_add(f"account {account}", self.max_per_account)

    def leave_account(self, account: str) -> None:
        self.counts.remove(f"account {account}")

    def account_sessions(self, account: str) -> int:
        return self.counts.get(f"account {account}")


class LoginPolicy:
    """The policy's shared state; each session takes its side with `session()`. `read` and
    `write` run blocking work off the event loop (cgpop/blocking.py)."""

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
        count_login: Callable[[str], None] = lambda result: None,
    ) -> None:
        """`count_login` is told each decided login's outcome: "ok", "auth_failed" (bad
        credentials), "refused" (admitted credentials, no session: a cap, a disabled service)
        or "alert" (cgpop_pop3_logins_total, cgpop/metrics.py)."""
        self.checks, self.read, self.write = checks, read, write
        self.take_alert, self.close_maildrop = take_alert, close_maildrop
        self.penalty, self.caps = penalty, caps
        self.count_login = count_login

    def session(self, peer_ip: str, slog: SessionLog) -> LoginSession:
        return LoginSession(self, peer_ip, slog)

    def logout(self, access: Access) -> None:
        """The session of an admitted login ended: its maildrop closes, its slot frees."""
        self.caps.leave_account(access.account)
        self.close_maildrop(access.snapshot)


class LoginSession:
    """The login attempts of one session, from `peer_ip`. `domain` (the default domain of bare
    names) is passed per attempt: it can change when TLS starts (SNI)."""

    def __init__(self, policy: LoginPolicy, peer_ip: str, slog: SessionLog) -> None:
        self.policy, self.peer_ip, self.slog = policy, peer_ip, slog
        self._key: tuple[str | None, str] = (None, "")

    async def penalty_key(self, login: str, domain: str) -> str:
        """The account a login tries, as the penalty counts it (one worker hop per name and
        session: the turn and the outcome of one attempt share it)."""
        if self._key[0] != login:
            p = self.policy
            self._key = (login, await p.read(p.checks.penalty_key, login, domain))
        return self._key[1]

    async def sasl_credentials(
        self, authcid: str, domain: str, password: str | None
    ) -> tuple[Credentials | None, bool | None]:
        """For a SASL mechanism: the stored keys of `authcid` (and whether `password` is
        right, when the mechanism carries one), in the (address, account) pair's turn
        (loginturn.py); a throttled attempt gets none, so the exchange fails as for a wrong
        password (the penalty applies when its failure comes to `decide`)."""
        p = self.policy
        key = await self.penalty_key(authcid, domain)
        async with login_turn(p.penalty, self.peer_ip, key) as throttled:
            if throttled is not None:
                return None, None if password is None else False
            found: tuple[Credentials | None, bool | None] = await p.read(
                p.checks.sasl_credentials, authcid, domain, password
            )
            return found

    async def password(
        self,
        login: str,
        domain: str,
        *,
        password: str | None,
        apop_digest: str | None,
        apop_banner: str,
    ) -> LoginResult:
        """USER/PASS or APOP: step 1 in the pair's turn, one check at a time per address and
        account however many connections (penalty.py, loginturn.py), then steps 2 to 4."""
        p = self.policy
        key = await self.penalty_key(login, domain)
        async with login_turn(p.penalty, self.peer_ip, key) as throttled:
            if throttled is not None:
                return await self.decide(throttled, login, domain)
            checked: LoginResult = await p.read(
                lambda: p.checks.password_login(
                    login,
                    domain,
                    password=password,
                    apop_digest=apop_digest,
                    apop_banner=apop_banner,
                )
            )
            return await self.decide(checked, login, domain)

    async def sasl(self, login: str, proven_by: str | None, domain: str) -> LoginResult:
        """SASL proved the credentials of `proven_by` (when set: an admin acting for `login`,
        RFC 4616 authzid) or of `login`."""
        p = self.policy
        checked: LoginResult
        if proven_by is not None and not await p.read(p.checks.is_admin, proven_by, domain):
            self.slog.info("%r may not log in as %r", proven_by[:100], login[:100])
            checked = LoginResult(error=AUTH_FAILED)
        else:
            checked = await p.read(p.checks.open_login, login, domain)
        return await self.decide(checked, proven_by or login, domain)

    def _under_cluster_cap(self, access: Access) -> bool:
        """With sessions on other nodes counted in, is the account still within
        `max_per_account`? `access.others` was counted when the maildrop opened, after this
        session's registry row committed (Store.open_session), so of two logins racing on two
        nodes at least one sees the other: the cap is never exceeded (both may be refused;
        the client retries). 0 on a store one process serves."""
        p = self.policy
        if p.caps.account_sessions(access.account) + access.others <= p.caps.max_per_account:
            return True
        p.caps.leave_account(access.account)
        return False

    async def decide(self, checked: LoginResult, login: str, domain: str) -> LoginResult:
        """Steps 2 to 4 for the outcome of step 1 (also for a SASL exchange that failed)."""
        p, slog = self.policy, self.slog
        key = await self.penalty_key(login, domain)  # the resolved account, bounded
        access = checked.access
        # 2. The failed-login delay.
        if access is None:
            slog.info("login failed for %r", login[:100])
            p.count_login("auth_failed" if checked.counts_as_failure else "refused")
            if checked.counts_as_failure:
                p.penalty.record_failure(self.peer_ip, key)
                # A growing delay per peer and per account slows guessing; the reply is the
                # same whatever failed.
                await asyncio.sleep(p.penalty.delay_for(self.peer_ip, key))
            return checked
        p.penalty.record_success(self.peer_ip, key)
        try:
            return await self._admit(checked, access)
        except BaseException:
            # The store became unavailable past step 1 (the caller answers -ERR [SYS/TEMP]):
            # the maildrop opened there closes, so it holds nothing.
            p.close_maildrop(access.snapshot)
            raise

    async def _admit(self, checked: LoginResult, access: Access) -> LoginResult:
        """Steps 3 and 4 for credentials that passed."""
        p, slog = self.policy, self.slog
        account = access.account
        # 3. An alert shown instead of the login.
        if access.alert_pending:
            alert = await p.write(p.take_alert, account)
            if alert is not None:
                p.close_maildrop(access.snapshot)
                slog.info("login %s: alert %d delivered", account, alert.id)
                p.count_login("alert")
                return LoginResult(error=Pop3Error(alert.text, "SYS/TEMP"), counts_as_failure=False)
        # 4. The per-account cap: this process's sessions, then those of other nodes.
        if not p.caps.enter_account(account) or not self._under_cluster_cap(access):
            p.close_maildrop(access.snapshot)
            slog.warning("login %s refused: per-account session limit", account)
            p.count_login("refused")
            return LoginResult(error=TOO_MANY_SESSIONS, counts_as_failure=False)
        snap = access.snapshot
        p.count_login("ok")
        slog.info("login %s mailbox %s (%d messages)", account, snap.mailbox.name, len(snap))
        return checked
