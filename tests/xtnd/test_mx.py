"""resolve_mx against a DNS server the test runs itself on 127.0.0.1 (UDP, port 0)."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.xtnd.conftest import Zone, start_dns
from xtnd.mx import MxError, MxHost, make_resolver, resolve_mx

ZONE: Zone = {
    ("example.org.", "MX"): [
        "20 backup.example.org.",
        "10 mx1.example.org.",
        "10 mx2.example.org.",
    ],
    ("mx1.example.org.", "A"): ["192.0.2.1"],
    ("mx1.example.org.", "AAAA"): ["2001:db8::1"],
    ("mx2.example.org.", "A"): ["192.0.2.2"],
    ("backup.example.org.", "A"): ["192.0.2.9"],
    ("nullmx.example.", "MX"): ["0 ."],
    ("plain.example.", "A"): ["192.0.2.50"],
    ("plain.example.", "AAAA"): ["2001:db8::50"],
    ("dead.example.", "MX"): ["10 gone.example."],
    ("gone.example.", "A"): "NXDOMAIN",
    ("gone.example.", "AAAA"): "NXDOMAIN",
    ("broken.example.", "MX"): "SERVFAIL",
    ("slow.example.", "MX"): "DROP",
    ("noaddr.example.", "TXT"): ['"only text"'],
}


def run(domain: str, **kw: object) -> list[MxHost]:
    async def main() -> list[MxHost]:
        transport, _protocol, port = await start_dns(ZONE)
        try:
            resolver = make_resolver(["127.0.0.1"], port=port, timeout=1.0)
            return await resolve_mx(domain, resolver, **kw)  # type: ignore[arg-type]
        finally:
            transport.close()

    return asyncio.run(main())


def test_preference_order_and_addresses() -> None:
    hosts = run("example.org")
    assert {h.host for h in hosts[:2]} == {"mx1.example.org", "mx2.example.org"}
    assert hosts[2] == MxHost("backup.example.org", 20, ("192.0.2.9",))
    mx1 = next(h for h in hosts if h.host == "mx1.example.org")
    assert mx1 == MxHost("mx1.example.org", 10, ("192.0.2.1", "2001:db8::1"))
    assert run("example.org", ipv6=False)[0].addresses in (("192.0.2.1",), ("192.0.2.2",))


def test_equal_preferences_are_shuffled() -> None:
    firsts = {run("example.org", rng=random.Random(seed))[0].host for seed in range(12)}
    assert firsts == {"mx1.example.org", "mx2.example.org"}


def test_null_mx_is_permanent() -> None:
    with pytest.raises(MxError, match="null MX") as info:
        run("nullmx.example")
    assert info.value.permanent


def test_no_mx_falls_back_to_address_records() -> None:
    assert run("plain.example") == [MxHost("plain.example", 0, ("192.0.2.50", "2001:db8::50"))]


def test_no_mx_and_no_address_is_permanent() -> None:
    with pytest.raises(MxError, match="no MX and no address") as info:
        run("noaddr.example")
    assert info.value.permanent


def test_nxdomain_is_permanent() -> None:
    with pytest.raises(MxError, match="does not exist") as info:
        run("nosuch.example")
    assert info.value.permanent


def test_mx_hosts_without_addresses_is_permanent() -> None:
    with pytest.raises(MxError, match="have no addresses") as info:
        run("dead.example")
    assert info.value.permanent


def test_servfail_is_temporary() -> None:
    with pytest.raises(MxError, match="SERVFAIL") as info:
        run("broken.example")
    assert not info.value.permanent


def test_timeout_is_temporary() -> None:
    with pytest.raises(MxError, match="timed out") as info:
        run("slow.example")
    assert not info.value.permanent


def test_invalid_domain_is_permanent() -> None:
    with pytest.raises(MxError) as info:
        run("a..b")
    assert info.value.permanent
