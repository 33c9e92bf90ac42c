"""The frozen result of resolving a name: which maildrop, and through which individual name."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Route:
    """Where a login or a recipient lands.

    `domain` and `account` are canonical (lower case, aliases already followed); `mailbox` keeps
    its case; `individual` is the part a wildcard record matched (CommuniGate's "individual
    name"), or None.
    """

    domain: str
    account: str
    mailbox: str = "INBOX"
    individual: str | None = None

    @property
    def address(self) -> str:
        return f"{self.account}@{self.domain}"


@dataclass(frozen=True, slots=True)
class LoginTarget:
    """A parsed and resolved login: whose credentials are checked, and which maildrop opens.

    `login_address` is the address part of the name as the user gave it (canonical case,
    default domain filled in): it routes to the authenticated account, so it is one of the
    account's own addresses (an allowed XTND XMIT `From`, issue 13)."""

    auth_domain: str
    auth_account: str
    route: Route
    # Not part of what the login means (two names reaching the same maildrop are equal).
    login_address: str = field(default="", compare=False)

    @property
    def auth_address(self) -> str:
        return f"{self.auth_account}@{self.auth_domain}"


class RouteError(Exception):
    """A name that does not parse, names nothing, or loops. The text is for logs, not clients."""
