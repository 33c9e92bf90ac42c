"""Routing-table records: the PATTERN and TARGET grammar, wildcard matching and substitution.

A record maps a PATTERN to a TARGET (CommuniGate's account aliases and "Direct Mailbox
Addressing" wildcards). Patterns are `local@domain` (exact), `*@domain` (every name in the
domain) or `prefix*@domain` (names that start with prefix). A target is `[mailbox#]local@domain`
whose local part may hold one `*`, replaced by the text the pattern's `*` matched.
Everything here is pure; resolve.py walks the table through the Directory protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from accounts.names import normalize_account, normalize_domain, validate_mailbox

WILDCARD = "*"
# A target may be an alias itself; this bounds how many records one resolution follows.
# CommuniGate and Postfix (virtual_alias_recursion_limit = 1000) both bound it; ten hops is far
# more than any sane alias chain and keeps a bad table from costing more than a few lookups.
MAX_ROUTE_DEPTH = 10


@dataclass(frozen=True, slots=True)
class Pattern:
    """A parsed routing pattern; `str()` gives the canonical text the store keys records by."""

    prefix: str
    domain: str
    wildcard: bool

    def __str__(self) -> str:
        star = WILDCARD if self.wildcard else ""
        return f"{self.prefix}{star}@{self.domain}"


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed routing target; `local` may hold one `*` until `substitute()` fills it."""

    local: str
    domain: str
    mailbox: str | None = None

    @property
    def has_wildcard(self) -> bool:
        return WILDCARD in self.local

    def __str__(self) -> str:
        box = f"{self.mailbox}#" if self.mailbox is not None else ""
        return f"{box}{self.local}@{self.domain}"


def _split_address(text: str, what: str) -> tuple[str, str]:
    local, at, domain = text.rpartition("@")
    if not at:
        raise ValueError(f"{what} needs the form name@domain")
    if not local:
        raise ValueError(f"{what} has an empty name before '@'")
    return local, normalize_domain(domain)


def _check_wildcard_local(local: str, what: str) -> str:
    """Validate a local part holding one `*` by checking it with the `*` replaced by a letter."""
    if local.count(WILDCARD) > 1:
        raise ValueError(f"{what} may hold only one '*'")
    normalize_account(local.replace(WILDCARD, "x"))
    return local.lower()


def parse_pattern(text: str) -> Pattern:
    """Parse `local@domain`, `*@domain` or `prefix*@domain`; raise ValueError with a reason."""
    local, domain = _split_address(text, "pattern")
    if WILDCARD not in local:
        return Pattern(normalize_account(local), domain, wildcard=False)
    if not local.endswith(WILDCARD):
        raise ValueError("pattern may only have '*' at the end of the name")
    prefix = _check_wildcard_local(local, "pattern")[: -len(WILDCARD)]
    return Pattern(prefix, domain, wildcard=True)


def parse_target(text: str) -> Target:
    """Parse `[mailbox#]local@domain`, local possibly holding one `*`; raise ValueError."""
    box, hash_, address = text.rpartition("#")
    mailbox = validate_mailbox(box) if hash_ else None
    local, domain = _split_address(address, "target")
    return Target(_check_wildcard_local(local, "target"), domain, mailbox)


def validate_route(pattern: str, target: str) -> tuple[str, str]:
    """Check a record for `route add`; return the canonical (pattern, target) texts to store."""
    p = parse_pattern(pattern)
    t = parse_target(target)
    if t.has_wildcard and not p.wildcard:
        raise ValueError("target uses '*' but the pattern has no '*' to fill it")
    if t.mailbox is None and str(t) == str(p):
        raise ValueError("pattern and target are the same address (a routing loop)")
    return str(p), str(t)


def wildcard_candidates(local: str, domain: str) -> Iterator[tuple[str, str]]:
    """Yield (pattern text, matched text) for `local@domain`, longest prefix first.

    The `*` must match at least one character, so `sales-*` does not match `sales-` itself;
    the last candidate is `*@domain`, which matches the whole name.
    """
    for cut in range(len(local) - 1, -1, -1):
        yield f"{local[:cut]}{WILDCARD}@{domain}", local[cut:]


def substitute(target: Target, matched: str | None) -> tuple[Target, bool]:
    """Fill the target's `*` with the matched text; also say whether the target consumed it."""
    if not target.has_wildcard:
        return target, False
    if matched is None:
        raise ValueError("target uses '*' but no wildcard matched")
    local = normalize_account(target.local.replace(WILDCARD, matched))
    return Target(local, target.domain, target.mailbox), True
