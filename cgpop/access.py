"""What a login may come to: the account and maildrop it opened with the rights it has
(`Access`), or the reply that refuses it, both as the login policy (cgpop/login.py) and its
parts (cgpop/auth.py, cgpop/loginturn.py) return them. Not the engine's events: the shell
translates (cgpop/runner.py)."""

from __future__ import annotations

from dataclasses import dataclass

from cgpop.errors import Pop3Error
from cgpop.store.api import Snapshot

AUTH_FAILED = Pop3Error("authentication failed", "AUTH")


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
    # Issue 11: the account's sessions on other nodes, counted when the maildrop opened
    # (after this session's registry row committed); 0 for a store one process serves.
    others: int = 0


@dataclass(frozen=True, slots=True)
class LoginResult:
    """Admitted with `access`, or refused with `error`."""

    access: Access | None = None
    error: Pop3Error | None = None
    # True when the refusal counts against the failed-login budget (bad credentials).
    counts_as_failure: bool = True
