"""A login whose credentials passed, then the store became unavailable (cgpop/login.py step 3,
taking an alert): the login fails with the store's TemporaryFailure (the runner answers
-ERR [SYS/TEMP]), and neither the maildrop it opened nor a per-account slot stays taken."""

from __future__ import annotations

import asyncio
import logging
from array import array
from collections.abc import Callable
from typing import Any

import pytest

from cgpop.access import Access, LoginResult
from cgpop.login import LoginPolicy, SessionCaps
from cgpop.logs import SessionLog
from cgpop.penalty import Penalty
from cgpop.store.api import Mailbox, Snapshot, TemporaryFailure

SNAP = Snapshot(Mailbox(7, 1, "joe@example.com", "INBOX", 1), array("q"), array("q"), 0.0, 0)


class Checks:
    def __init__(self, alert_pending: bool) -> None:
        self.alert_pending = alert_pending

    def password_login(self, login: str, default_domain: str, **kw: Any) -> LoginResult:
        return LoginResult(access=Access("joe@example.com", SNAP, alert_pending=self.alert_pending))

    def penalty_key(self, login: str, default_domain: str) -> str:
        return "joe@example.com"


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def unavailable(*args: object) -> Any:
    raise TemporaryFailure("database unavailable")


def test_a_login_the_store_fails_after_the_credentials_keeps_nothing() -> None:
    closed: list[Snapshot] = []
    caps = SessionCaps(max_per_ip=10, max_per_account=1)
    policy = LoginPolicy(
        Checks(alert_pending=True),  # type: ignore[arg-type]
        read=run,
        write=run,
        take_alert=unavailable,
        close_maildrop=closed.append,
        penalty=Penalty(),
        caps=caps,
    )
    slog = SessionLog(logging.getLogger("test"), "POP3", "s1", "127.0.0.1:1")
    login = policy.session("127.0.0.1", slog).password(
        "joe", "example.com", password="pw", apop_digest=None, apop_banner=""
    )
    with pytest.raises(TemporaryFailure):
        asyncio.run(login)
    assert closed == [SNAP]  # the maildrop opened at step 1 holds nothing
    assert caps.account_sessions("joe@example.com") == 0
