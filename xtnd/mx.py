"""Find where to deliver mail for a domain: MX hosts in order, each with its addresses.

RFC 5321 section 5.1 with RFC 7505: MX records sorted by preference, equal preferences shuffled
(load spreading, "SHOULD" in section 5.1); no MX records means the domain itself is the implicit
MX (A/AAAA fallback); a null MX (one record, preference 0, exchange ".") means the domain accepts
no mail, a permanent failure (RFC 7505 section 3); NXDOMAIN is permanent; timeouts, SERVFAIL and
other resolver trouble are temporary, so the queue retries later.

Uses dnspython's asyncio resolver; `make_resolver` takes explicit nameservers and port so tests
can point it at a DNS server of their own on loopback.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX

__all__ = ["MAX_MX_HOSTS", "MxError", "MxHost", "make_resolver", "resolve_mx"]

# Bound the work one domain can cause. Postfix tries at most 5 MX addresses per delivery
# (smtp_mx_address_limit); 10 hosts, each looked up once, is plenty and still small.
MAX_MX_HOSTS = 10


class MxError(Exception):
    """No deliverable host: `permanent` failures bounce, temporary ones are retried."""

    def __init__(self, text: str, permanent: bool) -> None:
        super().__init__(text)
        self.text = text
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class MxHost:
    """One host to try, in order: its name (no trailing dot), MX preference, addresses."""

    host: str
    preference: int
    addresses: tuple[str, ...]


def make_resolver(
    nameservers: Sequence[str] | None = None, port: int = 53, timeout: float = 10.0
) -> dns.asyncresolver.Resolver:
    """A resolver for the given servers (system configuration when None).

    `timeout` bounds each whole lookup (dnspython's `lifetime`), retries included.
    """
    if nameservers is None:
        resolver = dns.asyncresolver.Resolver(configure=True)
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = list(nameservers)
    resolver.port = port
    # Jobs to one domain repeat the same MX and address lookups; honour the records' TTLs.
    resolver.cache = dns.resolver.Cache()
    resolver.lifetime = timeout
    resolver.timeout = min(resolver.timeout, timeout)
    return resolver


async def resolve_mx(
    domain: str,
    resolver: dns.asyncresolver.Resolver,
    *,
    rng: random.Random | None = None,
    ipv6: bool = True,
) -> list[MxHost]:
    """Hosts for `domain` in the order to try them; only hosts with addresses are listed.

    Addresses list IPv4 first, then IPv6 (when `ipv6`), because an IPv6 route that is configured
    but broken is the commoner failure on small servers. Raises `MxError`.
    """
    try:
        name = dns.name.from_text(domain.rstrip(".") + ".")
    except dns.exception.DNSException as exc:
        raise MxError(f"invalid domain {domain}: {exc}", permanent=True) from None
    shown = name.to_text(omit_final_dot=True)
    pick = rng if rng is not None else random.SystemRandom()

    try:
        answer = await resolver.resolve(name, "MX", search=False)
        records = [cast(MX, r) for r in answer]
    except dns.resolver.NXDOMAIN:
        raise MxError(f"domain {shown} does not exist", permanent=True) from None
    except dns.resolver.NoAnswer:
        records = []
    except dns.exception.DNSException as exc:
        raise MxError(f"MX lookup for {shown} failed: {_describe(exc)}", permanent=False) from None

    if not records:
        # RFC 5321 section 5.1: no MX records, the domain is its own implicit MX (preference 0).
        addresses, temporary = await _addresses(resolver, name, ipv6)
        if addresses:
            return [MxHost(shown, 0, addresses)]
        if temporary:
            raise MxError(f"address lookup for {shown} failed", permanent=False)
        raise MxError(f"domain {shown} has no MX and no address records", permanent=True)

    if len(records) == 1 and records[0].exchange == dns.name.root:
        # RFC 7505 section 3: null MX, the domain explicitly accepts no mail.
        raise MxError(f"domain {shown} accepts no mail (null MX)", permanent=True)
    # RFC 7505 section 3 forbids a null MX alongside others; if one is there anyway, skip it.
    records = [r for r in records if r.exchange != dns.name.root]
    # Shuffle first, then a stable sort: equal preferences end up in random order.
    pick.shuffle(records)
    records.sort(key=lambda r: r.preference)
    records = records[:MAX_MX_HOSTS]

    found = await asyncio.gather(*(_addresses(resolver, r.exchange, ipv6) for r in records))
    hosts = [
        MxHost(r.exchange.to_text(omit_final_dot=True), r.preference, addresses)
        for r, (addresses, _temporary) in zip(records, found, strict=True)
        if addresses
    ]
    if hosts:
        return hosts
    if any(temporary for _addresses_, temporary in found):
        raise MxError(f"address lookup for the MX hosts of {shown} failed", permanent=False)
    # RFC 5321 section 5.1: MX records present but none usable "MUST be reported as an error".
    raise MxError(f"MX hosts of {shown} have no addresses", permanent=True)


async def _addresses(
    resolver: dns.asyncresolver.Resolver, name: dns.name.Name, ipv6: bool
) -> tuple[tuple[str, ...], bool]:
    """(addresses, whether a lookup failed temporarily) for one host name."""
    types = ("A", "AAAA") if ipv6 else ("A",)
    results = await asyncio.gather(*(_lookup(resolver, name, t) for t in types))
    addresses = tuple(a for found, _ in results for a in found)
    return addresses, any(temporary for _, temporary in results)


async def _lookup(
    resolver: dns.asyncresolver.Resolver, name: dns.name.Name, rdtype: str
) -> tuple[list[str], bool]:
    try:
        answer = await resolver.resolve(name, rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return [], False
    except dns.exception.DNSException:
        return [], True
    return [r.to_text() for r in answer], False


def _describe(exc: dns.exception.DNSException) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "no name server answered (SERVFAIL or refused)"
    return (type(exc).__doc__ or "DNS error").strip().splitlines()[0]
