"""Resource bounds checked from the outside (issue 10): slow senders are closed, server memory
stays bounded under concurrent large messages, LMTP has a connection cap, and one address
cannot multiply its password guesses by opening many connections."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from tests.conftest import LiveServer

from .helpers import TIMEOUT, Raw

# ---- slow senders (slowloris) ----


def test_a_line_dribbled_byte_by_byte_is_cut_off(
    server_factory: Callable[..., LiveServer],
) -> None:
    """A client that sends a byte at a time and never ends its line is closed once the line
    has taken `line_timeout`, however often bytes arrive (the idle timer alone never fired)."""
    srv = server_factory(pop3={"line_timeout": 1.0})
    with Raw(srv) as c:
        c.sock.settimeout(0.25)
        sent = 0
        closed = False
        deadline = time.monotonic() + 20  # the test's own bound, far above line_timeout
        while time.monotonic() < deadline:
            try:
                c.sock.sendall(b"U")
                sent += 1
                if c.sock.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue  # nothing from the server yet: dribble on
            except OSError:
                closed = True
                break
        assert closed, f"still open after {sent} bytes of one unfinished line"


def test_pauses_between_whole_commands_are_not_cut_off(
    server_factory: Callable[..., LiveServer],
) -> None:
    """The bound is on a begun line, not on idle time between commands (RFC 1939's 10
    minutes): a client pausing longer than line_timeout between commands keeps its session."""
    srv = server_factory(pop3={"line_timeout": 0.5})
    with Raw(srv) as c:
        for _ in range(3):
            time.sleep(0.7)  # idle between commands, longer than the line bound
            assert c.cmd("NOOP").startswith(b"-ERR")  # NOOP before login: an -ERR reply
            # (the connection is alive and answering)


def test_slow_senders_count_against_max_per_ip(
    server_factory: Callable[..., LiveServer],
) -> None:
    srv = server_factory(pop3={"max_per_ip": 2, "line_timeout": 30.0})
    slow = [Raw(srv), Raw(srv)]
    for c in slow:
        c.send(b"US")  # a line begun, never ended
    with socket.create_connection((srv.host, srv.port()), TIMEOUT) as third:
        assert third.makefile("rb").readline().startswith(b"-ERR [SYS/TEMP] too many")
    for c in slow:
        c.close()
