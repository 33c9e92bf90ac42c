"""Individual names from a message's own X-Real-To field (issue 13, item 1).

CommuniGate's POP module shows an individual-name login the messages whose X-Real-To field (or
the field named in the Local Delivery settings: `[pop3] real_to_header` here) lists that name.
cgpop records the name in an indexed column at delivery, so a login never parses headers; this
module fills that column for mail the router gave no name: an imported Maildir or mbox, or a
delivery to the account itself of a message that already carries the field.

An address in the field counts when the router sends it to the same account through a wildcard
record (which is what makes an individual name); the text the wildcard matched is the name, as
for a delivery. Pure apart from the `resolve` callable it is given.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import getaddresses

from cgpop.store.api import REAL_TO_SEPARATOR
from router.resolve import Directory, resolve_recipient
from router.route import Route, RouteError

__all__ = ["HeaderRealTo", "RealTo", "field_addresses", "resolver"]

Resolve = Callable[[str], Route | None]

_HEADER_END = re.compile(rb"\r?\n\r?\n")
# Each address costs a few routing lookups. RFC 5321 section 4.5.3.1.8 makes 100 the number of
# recipients a server must accept for one message; a field naming more is no delivery record,
# and stopping there bounds what a forged field can cost per delivery.
MAX_ADDRESSES = 100
# An address as recorded: what delivery's own X-Real-To records (no control characters, no
# angle brackets, at most 320 octets: RFC 5321 section 4.5.3.1 local part plus domain).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f<>]")
_MAX_ADDRESS = 320
# A batch's remembered routes: a large import names the same few addresses again and again.
_MAX_CACHED = 10_000


@dataclass(frozen=True, slots=True)
class RealTo:
    """What to record for one copy: the addresses that gave names, and the names, in order."""

    addresses: tuple[str, ...] = ()
    individuals: tuple[str, ...] = ()

    @property
    def stored(self) -> str | None:
        """The `x_real_to` column's text (several addresses joined by REAL_TO_SEPARATOR)."""
        return REAL_TO_SEPARATOR.join(self.addresses) or None


def field_addresses(message: bytes, name: str) -> list[str]:
    """The addresses listed in every `name:` field of the message's header, in order, without
    repeats (case-insensitive), at most MAX_ADDRESSES."""
    end = _HEADER_END.search(message)
    header = (message[: end.start()] if end else message).decode("latin-1")
    pattern = re.compile(
        rf"^{re.escape(name)}[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE
    )
    values = [re.sub(r"\r?\n", "", m.group(1)) for m in pattern.finditer(header)]
    found: list[str] = []
    seen: set[str] = set()
    for _, address in getaddresses(values):
        address = _UNSAFE.sub("", address).strip()[:_MAX_ADDRESS]
        if "@" not in address or address.lower() in seen:
            continue
        seen.add(address.lower())
        found.append(address)
        if len(found) >= MAX_ADDRESSES:
            break
    return found


class HeaderRealTo:
    """One message's field, parsed once, asked per recipient account."""

    def __init__(self, message: bytes, name: str, resolve: Resolve) -> None:
        self.message, self.name, self.resolve = message, name, resolve
        self._routes: dict[str, Route | None] | None = None

    def for_account(self, domain: str, account: str) -> RealTo:
        """The addresses of the field that the router sends to `account@domain` with an
        individual name, and those names (lower case, no repeats)."""
        if self._routes is None:
            self._routes = {a: self.resolve(a) for a in field_addresses(self.message, self.name)}
        addresses: list[str] = []
        names: list[str] = []
        for address, route in self._routes.items():
            if route is None or route.individual is None:
                continue
            if (route.domain, route.account) != (domain, account):
                continue
            name = route.individual.lower()
            if name not in names:
                names.append(name)
                addresses.append(address)
        return RealTo(tuple(addresses), tuple(names))


@dataclass(frozen=True, slots=True)
class _Resolver:
    directory: Directory
    default_domain: str
    cache: dict[str, Route | None] = field(default_factory=dict)

    def __call__(self, address: str) -> Route | None:
        if address not in self.cache:
            if len(self.cache) >= _MAX_CACHED:
                self.cache.clear()
            try:
                route: Route | None = resolve_recipient(
                    address, default_domain=self.default_domain, directory=self.directory
                )
            except (RouteError, ValueError):
                route = None
            self.cache[address] = route
        return self.cache[address]


def resolver(directory: Directory, default_domain: str) -> Resolve:
    """A resolve callable for a batch (an import): routes remembered for the batch's life."""
    return _Resolver(directory, default_domain)
