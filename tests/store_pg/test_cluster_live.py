"""Two `cgpop serve` processes on one PostgreSQL database, administered with the `cgpop` CLI and
talked to with real clients (poplib, LMTP), then behind a real HAProxy with `send-proxy-v2`
(issue 11: "What must hold across nodes", "Real components")."""

from __future__ import annotations

import poplib
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cgpop.store.postgres import PostgresStore
from tests.conftest import message
from tests.store_pg.cluster import (
    CLIENT_IP,
    DIRECT_IP,
    PASSWORD,
    TIMEOUT,
    USER,
    HaProxy,
    Node,
    Pop,
    pop,
)


@pytest.fixture
def cluster(pg_dsn: str, tmp_path: Path) -> Iterator[list[Node]]:
    """Nodes started by the test (`start`), stopped afterwards, before the schema goes."""
    started: list[Node] = []
    yield started
    for node in started:
        node.stop()


def two_nodes(cluster: list[Node], tmp_path: Path, dsn: str, **options: object) -> list[Node]:
    cluster += [Node(tmp_path, name, dsn, **options) for name in ("pop-a", "pop-b")]
    a = cluster[0]
    assert a.cli("domain", "add", "example.com").returncode == 0
    done = a.cli("account", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    return cluster


def lmtp_deliver(node: Node, *subjects: str) -> None:
    with smtplib.LMTP("127.0.0.1", node.ports["LMTP"], timeout=TIMEOUT) as lmtp:
        for subject in subjects:
            assert lmtp.sendmail("s@remote.test", [USER], message(subject)) == {}


def subject(client: poplib.POP3, n: int) -> bytes:
    lines = client.retr(n)[1]
    return next(x for x in lines if x.startswith(b"Subject:"))


def test_two_serve_processes_one_directory_one_maildrop(
    cluster: list[Node], tmp_path: Path, pg_dsn: str
) -> None:
    a, b = two_nodes(cluster, tmp_path, pg_dsn)
    # An account added through A's CLI logs in on B at once (no restart).
    first = pop(b.ports["POP3"])
    assert first.stat() == (0, 0)
    first.quit()
    # LMTP into A, POP on B; the same UIDLs through both nodes.
    lmtp_deliver(a, "one", "two", "three")
    on_a, on_b = pop(a.ports["POP3"]), pop(b.ports["POP3"])
    assert on_a.uidl()[1] == on_b.uidl()[1]
    assert len(on_a.uidl()[1]) == 3
    # Expunged through B: A's open session keeps its snapshot and still reads it.
    on_b.dele(1)
    assert on_b.quit().startswith(b"+OK")
    assert b.cli("mailbox", "list", USER).returncode == 0
    assert on_a.stat()[0] == 3
    assert subject(on_a, 1) == b"Subject: one"
    assert on_a.quit().startswith(b"+OK")
    again = pop(a.ports["POP3"])
    assert again.stat()[0] == 2
    assert subject(again, 1) == b"Subject: two"
    again.quit()
    # A directory change through B's CLI is in force on A at once: a removed account is gone.
    assert b.cli("account", "add", "ann@example.com", "--password", "pw").returncode == 0
    ann = Pop(a.ports["POP3"], DIRECT_IP)
    ann.user("ann@example.com")
    assert ann.pass_("pw").startswith(b"+OK")
    ann.quit()


def test_an_alert_is_shown_once_across_nodes(
    cluster: list[Node], tmp_path: Path, pg_dsn: str
) -> None:
    a, b = two_nodes(cluster, tmp_path, pg_dsn)
    done = b.cli("alert", "add", USER, "Maintenance tonight")
    assert done.returncode == 0, done.stderr
    client = Pop(a.ports["POP3"], DIRECT_IP)
    client.user(USER)
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] Maintenance tonight"):
        client.pass_(PASSWORD)
    client.quit()
    # Taken on A: not shown again on B, nor on A.
    for node in (b, a):
        pop(node.ports["POP3"]).quit()


def expunged_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM messages WHERE expunged_xid IS NOT NULL"
        ).fetchone()
    assert row is not None
    return int(row[0])


def wait_node_dead(probe: PostgresStore, node: str) -> float:
    """Seconds until `node`'s sessions leave the registry. Bounded waiting is the point here:
    node_timeout is a span of time, and a dead node announces nothing."""
    start = time.monotonic()
    tick = threading.Event()
    while any(n == node for _, n, _, _ in probe.live_sessions()):
        assert time.monotonic() - start < 4 * TIMEOUT, "dead node's sessions never released"
        tick.wait(0.2)
    return time.monotonic() - start


def test_haproxy_spreads_passes_client_address_and_routes_around_a_dead_node(
    cluster: list[Node], tmp_path: Path, pg_dsn: str
) -> None:
    a, b = two_nodes(cluster, tmp_path, pg_dsn, proxy=True, max_per_ip=1)
    proxy = HaProxy(tmp_path, [a, b])
    try:
        lmtp_deliver(a, "one", "two")
        # Four clients from four addresses: all in, although with max_per_ip = 1 a node that
        # saw HAProxy's address would refuse its second session.
        clients = [pop(proxy.port, f"127.0.0.{n}") for n in (2, 3, 4, 6)]
        # Spread over both nodes, each logging the client's address (PROXY v2), not HAProxy's.
        for node in (a, b):
            node.wait_log(r"\] 127\.0\.0\.[2346]:\d+: connected")
        assert all(c.stat()[0] == 2 for c in clients)
        # A second session from 127.0.0.2 on the node that already has one is refused.
        greetings = []
        extra = []
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", proxy.port), TIMEOUT, (CLIENT_IP, 0))
            extra.append(sock)
            with sock.makefile("rb") as f:
                greetings.append(f.readline())
        assert b"-ERR [SYS/TEMP] too many connections, try later\r\n" in greetings
        for sock in extra:
            sock.close()
        for c in clients:
            c.quit()

        # A session on A holds its snapshot; B expunges what it sees.
        held = pop(a.ports["POP3"], DIRECT_IP)
        assert held.stat()[0] == 2
        through_b = pop(b.ports["POP3"], DIRECT_IP)
        through_b.dele(1)
        through_b.quit()
        probe = PostgresStore(pg_dsn, node="probe", pool_size=1)
        try:
            probe.collect()
            assert expunged_rows(pg_dsn) == 1  # held by A's live session
            a.kill()
            # New sessions through HAProxy go to B (redispatch, then the health check).
            for _ in range(4):
                client = pop(proxy.port, "127.0.0.7")
                assert client.stat()[0] == 1
                client.quit()
            # A's sessions are released after node_timeout (3 s); the collector then removes
            # what only they held.
            waited = wait_node_dead(probe, "pop-a")
            assert waited < 3 * 3 + TIMEOUT
            probe.collect()
            assert expunged_rows(pg_dsn) == 0
        finally:
            probe.close()
        held.close()
    finally:
        proxy.stop()
