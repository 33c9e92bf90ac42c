"""Resolve login names and recipient addresses to a Route through the routing table.

One walk serves POP logins, LMTP/`deliver` recipients and XTND XMIT recipients. For an address
local@domain, after the domain is made canonical through domain aliases, the first of these wins:

1. an exact record `local@domain`;
2. an existing account `local` in the domain;
3. the wildcard record with the longest matching prefix (`sales-*@domain`), lastly `*@domain`.

The text a `*` matched becomes the route's individual name unless the target uses it in its own
`*`. Targets are walked again (an alias may point at an alias), at most MAX_ROUTE_DEPTH records,
and never through the same address twice. When several hops carry a mailbox or an individual
name, the outermost one (closest to what the user typed) wins; a mailbox in the name itself wins
over any record's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from accounts.names import INBOX, normalize_domain
from router.loginname import parse_name
from router.route import LoginTarget, Route, RouteError
from router.table import MAX_ROUTE_DEPTH, parse_target, substitute, wildcard_candidates


class Directory(Protocol):
    """What the router needs from the store; names passed in are already normalised."""

    def canonical_domain(self, name: str) -> str | None:
        """The real domain for a domain or a domain alias, or None if unknown."""
        ...

    def account_exists(self, domain: str, account: str) -> bool: ...

    def route_target(self, pattern: str) -> str | None:
        """The stored target of the record keyed exactly by `pattern`, or None."""
        ...


@dataclass(frozen=True, slots=True)
class _Step:
    """One table decision: follow `target` (None: stop, the account exists), `matched` by `*`."""

    target: str | None
    matched: str | None = None


def _lookup(local: str, domain: str, known: bool, directory: Directory) -> _Step | None:
    exact = directory.route_target(f"{local}@{domain}")
    if exact is not None:
        return _Step(exact)
    if known and directory.account_exists(domain, local):
        return _Step(None)
    for pattern, matched in wildcard_candidates(local, domain):
        target = directory.route_target(pattern)
        if target is not None:
            return _Step(target, matched)
    return None


def _walk(local: str, domain: str, directory: Directory) -> Route:
    visited: set[str] = set()
    mailbox: str | None = None
    individual: str | None = None
    # MAX_ROUTE_DEPTH records followed, plus the final address that names an account.
    for _ in range(MAX_ROUTE_DEPTH + 1):
        canonical = directory.canonical_domain(domain)
        # Records may exist for a domain we do not host (`*@client1.net` -> `*@client1.com`).
        lookup_domain = canonical if canonical is not None else domain
        address = f"{local}@{lookup_domain}"
        if address in visited:
            raise RouteError(f"routing loop through {address}")
        visited.add(address)
        step = _lookup(local, lookup_domain, canonical is not None, directory)
        if step is None:
            raise RouteError(f"unknown {'account' if canonical else 'domain'} in {address}")
        if step.target is None:
            assert canonical is not None  # _lookup only stops at accounts of known domains
            return Route(canonical, local, mailbox or INBOX, individual)
        try:
            target, consumed = substitute(parse_target(step.target), step.matched)
        except ValueError as exc:
            raise RouteError(f"bad routing record for {address}: {exc}") from exc
        if step.matched is not None and not consumed and individual is None:
            individual = step.matched
        if mailbox is None:
            mailbox = target.mailbox
        local, domain = target.local, target.domain
    raise RouteError(f"routing loop: more than {MAX_ROUTE_DEPTH} records deep")


def resolve_recipient(address: str, *, default_domain: str, directory: Directory) -> Route:
    """Route a delivery address (`[mailbox#]account[@domain]`); raise RouteError."""
    parsed = parse_name(address)
    if parsed.owner is not None:
        raise RouteError("a '~owner/mailbox' name is not a recipient")
    domain = parsed.domain or normalize_domain(default_domain)
    route = _walk(parsed.account, domain, directory)
    if parsed.mailbox is None:
        return route
    return Route(route.domain, route.account, parsed.mailbox, route.individual)


def resolve_login(name: str, *, default_domain: str, directory: Directory) -> LoginTarget:
    """Resolve a POP login name: whose password is checked, and which maildrop opens.

    The account part (after routing) authenticates. Mailbox existence and the rights on a
    foreign mailbox are the store's and the ACL's business, not checked here.
    """
    parsed = parse_name(name)
    domain = parsed.domain or normalize_domain(default_domain)
    auth = _walk(parsed.account, domain, directory)
    if parsed.owner is None:
        mailbox = parsed.mailbox or auth.mailbox
        route = Route(auth.domain, auth.account, mailbox, auth.individual)
    else:
        # `~owner[@domain]/box#user`. The individual name filters the user's own maildrop
        # only, so it does not carry over.
        owner_domain, owner = _owner(parsed.owner, parsed.owner_domain, auth.domain, directory)
        route = Route(owner_domain, owner, parsed.mailbox or INBOX, None)
    return LoginTarget(auth.domain, auth.account, route, f"{parsed.account}@{domain}")


def _owner(
    owner: str, owner_domain: str | None, auth_domain: str, directory: Directory
) -> tuple[str, str]:
    """(domain, account) of the `~owner` of a foreign-mailbox login. Without a domain the owner
    is an account of the authenticated user's domain; `~owner@domain` is an address the router
    resolves, in any domain (CommuniGate's `~account/mailbox`), the rights on the mailbox
    being the ACL's business as within a domain (issue 13)."""
    if owner_domain is None:
        if not directory.account_exists(auth_domain, owner):
            raise RouteError(f"unknown account {owner}@{auth_domain}")
        return auth_domain, owner
    found = _walk(owner, owner_domain, directory)
    return found.domain, found.account


def is_claimed(address: str, *, directory: Directory) -> bool:
    """For an address that resolves to no mailbox: True when it is still this system's to
    answer for (refuse) rather than another's (relay). That is when the walk would call it an
    unknown account (its domain, or the domain an alias stands for, is hosted here), or when a
    routing record claims the address, exactly or by wildcard, though its target leads
    nowhere. The same indexed lookups as the walk's first step, no table scan."""
    try:
        parsed = parse_name(address)
    except RouteError:
        parsed = None
    if parsed is None or parsed.domain is None:
        return directory.canonical_domain(address.rpartition("@")[2].lower()) is not None
    local, domain = parsed.account, parsed.domain
    if directory.canonical_domain(domain) is not None:
        return True
    patterns = [f"{local}@{domain}", *(p for p, _ in wildcard_candidates(local, domain))]
    return any(directory.route_target(p) is not None for p in patterns)
