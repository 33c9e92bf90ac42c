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


# ---- brute force from many connections of one address ----

SPELLINGS = ("joe", "joe@example.com", "INBOX#joe", "joe%example.com", "~joe/INBOX#joe", "JOE")


def _guesser(srv: LiveServer, spelling: str, until: float, replies: list[bytes]) -> None:
    with Raw(srv) as c:
        c.sock.settimeout(30)
        while time.monotonic() < until:
            assert c.cmd(f"USER {spelling}").startswith(b"+OK")
            replies.append(c.cmd("PASS wrong-guess").rstrip())


def test_many_connections_of_one_address_get_no_more_guesses(
    server_factory: Callable[..., LiveServer],
) -> None:
    """24 connections from 127.0.0.1 guess joe's password under six spellings of his name for
    3 s. Only checked guesses answer [AUTH]; the others wait for the (address, account) turn
    and are refused unchecked with [SYS/TEMP]. One address gets about one check per
    auth_delay_max (0.5 s here) after a short start; before the fix, every connection got
    its own delay and 24 connections checked ~24 times as many. Meanwhile joe logs in from
    another address at once: the flood locks nobody else out."""
    import threading

    srv = server_factory(
        pop3={
            "auth_delay": 0.05,
            "auth_delay_max": 0.5,
            "max_auth_failures": 1000,
            "max_per_ip": 30,
        }
    )
    srv.add_account("joe@example.com", "secret")
    window = 3.0
    until = time.monotonic() + window
    replies: list[bytes] = []
    threads = [
        threading.Thread(target=_guesser, args=(srv, SPELLINGS[i % 6], until, replies))
        for i in range(24)
    ]
    for t in threads:
        t.start()
    with socket.create_connection(
        (srv.host, srv.port()), TIMEOUT, source_address=("127.0.0.2", 0)
    ) as other:
        f = other.makefile("rb")
        assert f.readline().startswith(b"+OK")
        other.sendall(b"USER joe@example.com\r\nPASS secret\r\n")
        assert f.readline().startswith(b"+OK")
        assert f.readline().startswith(b"+OK"), "joe was locked out by another address"
    for t in threads:
        t.join(60)
    checked = [r for r in replies if r.startswith(b"-ERR [AUTH]")]
    refused = [r for r in replies if r.startswith(b"-ERR [SYS/TEMP]")]
    assert len(checked) + len(refused) == len(replies)
    # The start (0.05 + 0.1 + 0.2 s spacing) admits ~4 at once; then one per 0.5 s, plus the
    # replies of guesses started before the window closed.
    assert 1 <= len(checked) <= 4 + window / 0.5 + 3, len(checked)
