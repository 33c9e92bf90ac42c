"""Connection limits and the failed-login defence against a live server: max_channels, the
per-address and per-account caps, the growing delay and the disconnect after the budget."""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.conftest import LiveServer

from .secure import (  # noqa: F401 (close_clients is an autouse fixture)
    PASSWORD,
    USER,
    Client,
    close_clients,
    login,
    proxy_v1,
)

TRY_LATER = "-ERR [SYS/TEMP] too many connections, try later"


def test_max_channels(server_factory: Callable[..., LiveServer]) -> None:
    srv = server_factory(pop3={"max_channels": 2})
    srv.add_account(USER, PASSWORD)
    a, b = Client(srv.port()), Client(srv.port())
    refused = Client(srv.port(), greet=False)
    assert refused.line() == TRY_LATER
    assert refused.closed()
    # The sessions already open are unaffected.
    assert login(a).startswith("+OK")
    assert b.cmd("QUIT").startswith("+OK")
    b.closed()
    assert login(Client(srv.port())).startswith("+OK")


def test_max_per_ip_counts_the_real_client(server_factory: Callable[..., LiveServer]) -> None:
    srv = server_factory(
        pop3={"max_per_ip": 2, "proxy_from": ["127.0.0.1"], "plaintext_auth": "always"}
    )
    srv.add_account(USER, PASSWORD)
    for _ in range(2):
        Client(srv.port(), prefix=proxy_v1("198.51.100.1"))
    refused = Client(srv.port(), prefix=proxy_v1("198.51.100.1"), greet=False)
    assert refused.line() == TRY_LATER
    assert refused.closed()
    # Another client behind the same proxy still gets in.
    assert login(Client(srv.port(), prefix=proxy_v1("198.51.100.2"))).startswith("+OK")


def test_max_per_account(server_factory: Callable[..., LiveServer]) -> None:
    srv = server_factory(pop3={"max_per_account": 1})
    srv.add_account(USER, PASSWORD)
    srv.add_account("ann@example.com", "ann-pw")
    first = Client(srv.port())
    assert login(first).startswith("+OK")
    second = Client(srv.port())
    reply = login(second)
    assert reply.startswith("-ERR [SYS/TEMP]") and "try later" in reply
    assert login(Client(srv.port()), "ann@example.com", "ann-pw").startswith("+OK")
    assert first.cmd("STAT").startswith("+OK")
    assert first.cmd("QUIT").startswith("+OK")
    first.closed()
    assert login(second).startswith("+OK")


def _timed(c: Client, command: str) -> tuple[str, float]:
    start = time.monotonic()
    reply = c.cmd(command)
    return reply, time.monotonic() - start


def test_failed_logins_slow_down_then_disconnect(server_factory: Callable[..., LiveServer]) -> None:
    srv = server_factory(pop3={"auth_delay": 0.1, "auth_delay_max": 2.0, "max_auth_failures": 3})
    srv.add_account(USER, PASSWORD)
    c = Client(srv.port())
    replies, times = [], []
    for name in (USER, "nobody@example.com", USER):
        assert c.cmd(f"USER {name}").startswith("+OK")
        reply, took = _timed(c, "PASS wrong")
        replies.append(reply)
        times.append(took)
    # Unknown account and bad password look the same.
    assert replies[0] == replies[1] == "-ERR [AUTH] authentication failed"
    assert replies[2] == "-ERR [AUTH] too many failed logins, closing"
    assert c.closed()
    assert times[0] < times[1] < times[2]
    assert times[2] - times[0] > 0.15
    # The peer's record carries over to the next connection. Joe's success clears only joe's
    # record from this address, not the address's (issue 10: one account's success must not
    # wipe the record of an address that may be guessing others): ann's failure is slower still.
    d = Client(srv.port())
    assert d.cmd(f"USER {USER}").startswith("+OK")
    reply, took = _timed(d, f"PASS {PASSWORD}")
    assert reply.startswith("+OK")
    e = Client(srv.port())
    assert e.cmd("USER ann@example.com").startswith("+OK")
    _, later = _timed(e, "PASS wrong")
    assert later > times[2]


def test_sasl_failures_count_too(server_factory: Callable[..., LiveServer]) -> None:
    import base64

    srv = server_factory(pop3={"auth_delay": 0.1, "max_auth_failures": 2})
    srv.add_account(USER, PASSWORD)
    c = Client(srv.port())
    bad = base64.b64encode(f"\0{USER}\0wrong".encode()).decode()
    assert c.cmd(f"AUTH PLAIN {bad}") == "-ERR [AUTH] authentication failed"
    start = time.monotonic()
    assert c.cmd(f"AUTH PLAIN {bad}") == "-ERR [AUTH] too many failed logins, closing"
    assert time.monotonic() - start >= 0.2
    assert c.closed()
