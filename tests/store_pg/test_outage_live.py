"""A database outage under a live node (issue 11, "Database outage"): a real `cgpop serve` on a
PostgreSQL of the test's own, which the test stops (`pg_ctl stop -m immediate`, a crash as far as
the node can tell) and starts again on the same port. Checked from the outside with real
clients: while the database is down every request that needs it gets a temporary failure
(POP `-ERR [SYS/TEMP]`, LMTP 451, `deliver` exit 75, /healthz 503) within the documented bound
and nothing crashes; once it is back, service resumes without restarting the node.

docs/cluster.md, "What happens when the database is down", is the contract tested here.
"""

from __future__ import annotations

import base64
import re
import smtplib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

import psycopg
import pytest

from cgpop.store.pg_base import POOL_WAIT
from cgpop.sweeper import SWEEP_INTERVAL
from tests.conftest import message
from tests.e2e.helpers import Raw
from tests.pg import PgServer, private_postgres
from tests.store_pg.cluster import DIRECT_IP, PASSWORD, TIMEOUT, USER, Node, pop
from tests.xtnd.conftest import Sink, SinkHandler, _start

# The node's own bound on a client's wait while the database is down is POOL_WAIT per store
# call (docs/cluster.md); a call made once the pool knows the database is down fails much
# sooner. Every check below must answer within it.
BOUND = POOL_WAIT
TEMP = b"-ERR [SYS/TEMP] mail store temporarily unavailable, try again later\r\n"
P = ParamSpec("P")
R = TypeVar("R")
METRICS = '[metrics]\nlisten = "127.0.0.1:0"\n'


def raw_at(port: int) -> Raw:
    """A byte-level POP3 connection from the direct client address, greeted."""
    raw = Raw.at(port, DIRECT_IP)
    assert raw.greeting.startswith(b"+OK")
    return raw


def timed(what: str, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`fn(*args)`, asserting it answered within BOUND."""
    start = time.monotonic()
    result = fn(*args, **kwargs)
    took = time.monotonic() - start
    assert took < BOUND, f"{what} took {took:.1f} s with the database down (bound {BOUND} s)"
    return result


def lmtp_send(node: Node, subject: str) -> dict[str, tuple[int, bytes]]:
    with smtplib.LMTP("127.0.0.1", node.ports["LMTP"], timeout=TIMEOUT) as lmtp:
        return lmtp.sendmail("s@remote.test", [USER], message(subject))


def lmtp_refused(node: Node, subject: str) -> tuple[int, bytes]:
    """An LMTP delivery that must not be accepted: the reply to RCPT (or to DATA)."""
    with smtplib.LMTP("127.0.0.1", node.ports["LMTP"], timeout=TIMEOUT) as lmtp:
        lmtp.ehlo("mta.test")
        assert lmtp.mail("s@remote.test")[0] == 250
        code, text = lmtp.rcpt(USER)
        if code != 250:
            return code, text
        return lmtp.data(message(subject))


def xmit(raw: Raw, subject: str, to: str = USER) -> bytes:
    """XTND XMIT of a message from the account (to itself: a local delivery)."""
    assert raw.cmd("XTND XMIT") == b"+OK Start sending message.\r\n"
    head = f"From: {USER}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n"
    raw.sock.sendall(head.encode() + b"Hello.\r\n.\r\n")
    return raw.line()


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=TIMEOUT) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def metrics_port(node: Node) -> int:
    pattern = r"METRICS listening on 127\.0\.0\.1:(\d+)"
    for line in node.log:
        if found := re.search(pattern, line):
            return int(found[1])
    return int(node.wait_log(pattern)[1])


def login(port: int) -> bytes:
    """A new session's USER/PASS: its reply (b"+OK" when logged in), then QUIT."""
    raw = raw_at(port)
    try:
        assert raw.cmd(f"USER {USER}").startswith(b"+OK")
        reply = raw.cmd(f"PASS {PASSWORD}")
        assert raw.cmd("QUIT").startswith(b"+OK")
        return b"+OK" if reply.startswith(b"+OK ") else reply
    finally:
        raw.close()


def wait_for_service(port: int) -> None:
    """Once the database is back, logins succeed again within the bound, with no restart of
    the node; until then a login gets the same temporary failure as during the outage."""
    back = time.monotonic()
    while (reply := login(port)) != b"+OK":
        assert reply == TEMP, reply
        assert time.monotonic() - back < BOUND, "service did not resume"


def sasl_plain(raw: Raw) -> bytes:
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    return raw.cmd(f"AUTH PLAIN {token}")


def assert_alive(node: Node) -> None:
    assert node.proc.poll() is None, "".join(node.log)
    assert not [line for line in node.log if "Traceback" in line], "".join(node.log)


@pytest.fixture
def db() -> Iterator[PgServer]:
    with private_postgres() as server:
        yield server


@pytest.fixture
def raws() -> Iterator[list[Raw]]:
    """The test's raw POP connections, closed at the end whatever happened."""
    opened: list[Raw] = []
    yield opened
    for raw in opened:
        raw.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    """The smarthost the node relays XTND XMIT mail to."""
    yield from _start(SinkHandler())


@pytest.fixture
def node(db: PgServer, sink: Sink, tmp_path: Path) -> Iterator[Node]:
    relay = (
        f'[xtnd]\nrelay = "127.0.0.1:{sink.port}"\n'
        "queue_poll_interval = 0.2\nretry_schedule = [0.2]\n"
    )
    started = Node(tmp_path, "pop-a", db.dsn, extra=METRICS + relay)
    try:
        assert started.cli("domain", "add", "example.com").returncode == 0
        done = started.cli("account", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
        assert done.returncode == 0, done.stderr
        yield started
    finally:
        started.stop()


def test_outage_answers_temporary_failures_and_service_resumes(
    db: PgServer, node: Node, sink: Sink, raws: list[Raw]
) -> None:
    assert lmtp_send(node, "one") == {}
    assert lmtp_send(node, "two") == {}
    port, web = node.ports["POP3"], metrics_port(node)
    pid = node.proc.pid
    assert healthz(web) == (200, "ok\n")
    survivor, quitter = raw_at(port), raw_at(port)  # logged in before the outage
    raws += [survivor, quitter]
    for raw in (survivor, quitter):
        assert raw.login().startswith(b"+OK")
        assert raw.cmd("STAT").startswith(b"+OK 2 ")
    stat = survivor.cmd("STAT")
    # RETR 1 reads message 2 ahead into the session (cgpop/runner.py, READ_AHEAD).
    assert survivor.cmd("RETR 1").startswith(b"+OK")
    assert b"Subject: one\r\n" in survivor.multi()

    db.stop("immediate")
    stopped = time.monotonic()
    try:
        # New logins: USER/PASS and AUTH PLAIN, a clear temporary failure, in time.
        fresh = raw_at(port)
        raws.append(fresh)
        assert fresh.cmd(f"USER {USER}").startswith(b"+OK")
        reply = timed("PASS", fresh.cmd, f"PASS {PASSWORD}")
        assert reply == TEMP, reply
        reply = timed("AUTH PLAIN", sasl_plain, fresh)
        assert reply == TEMP, reply
        assert fresh.cmd("QUIT").startswith(b"+OK")
        fresh.close()

        # The open session: what its snapshot holds is served, the rest is a temporary
        # failure on one line; the session goes on.
        assert survivor.cmd("STAT") == stat
        assert survivor.cmd("UIDL").startswith(b"+OK")
        assert len(survivor.multi()) == 2
        # Read ahead before the outage: served (its \\Seen flag is not stored, and that
        # is logged).
        assert survivor.cmd("RETR 2").startswith(b"+OK")
        assert b"Subject: two\r\n" in survivor.multi()
        reply = timed("RETR", survivor.cmd, "RETR 1")
        assert reply == TEMP, reply
        reply = timed("XTND XMIT", xmit, survivor, "during")
        assert reply == b"-ERR [SYS/TEMP] temporary failure, message not sent; try again later\r\n"
        assert survivor.cmd("NOOP").startswith(b"+OK")

        # QUIT after DELE removes nothing, says so, and closes.
        assert quitter.cmd("DELE 1").startswith(b"+OK")
        reply = timed("QUIT", quitter.cmd, "QUIT")
        assert reply.startswith(b"-ERR [SYS/TEMP] "), reply
        assert quitter.at_eof()
        quitter.close()

        # LMTP: 451 with an enhanced code, at RCPT (the recipient cannot be checked).
        code, text = timed("LMTP", lmtp_refused, node, "down")
        assert (code, text[:6]) == (451, b"4.3.0 "), (code, text)

        # `cgpop deliver`: exit 75, a clear message, no traceback.
        done = node.cli("deliver", USER, stdin="Subject: down\n\nbody\n")
        assert done.returncode == 75, done.stderr
        assert "cgpop: cannot use the database" in done.stderr
        assert "Traceback" not in done.stderr

        status, text_ = timed("healthz", healthz, web)
        # The reason: the store's error, or (threads busy) that it did not answer in time.
        assert status == 503 and re.match(r"store (unavailable|did not answer)", text_), text_
        assert_alive(node)
        # Longer than node_timeout (3 s, cluster.py): when the database is back this node
        # counts as dead until its heartbeat thread, which lived through the outage, beats.
        time.sleep(max(0.0, 4.0 - (time.monotonic() - stopped)))
    finally:
        if not db.running():
            db.start(same_port=True)

    # Back: service resumes without a restart of the node, within the bound; until then a
    # login gets the same temporary failure as during the outage, nothing else.
    wait_for_service(port)
    client = pop(port)
    assert client.stat()[0] == 2
    assert b"Subject: one" in client.retr(1)[1]
    client.quit()
    client.close()
    assert survivor.cmd("STAT") == stat  # the DELE'd message of `quitter` is still there
    assert survivor.cmd("RETR 1").startswith(b"+OK")
    assert b"Subject: one\r\n" in survivor.multi()
    assert lmtp_send(node, "three") == {}
    assert xmit(survivor, "after") == b"+OK Message sent successfully\r\n"
    # The relay worker lived through the outage: it sends what is queued now.
    assert xmit(survivor, "relayed", "ann@example.org") == b"+OK Message sent successfully\r\n"
    deadline = time.monotonic() + TIMEOUT
    while not sink.handler.messages:
        assert time.monotonic() < deadline, "the relay worker did not send"
        time.sleep(0.05)
    assert healthz(web) == (200, "ok\n")
    # The registry: the node beats again, and its sessions are listed.
    beat = "SELECT heartbeat FROM store_instances WHERE node = 'pop-a'"
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        first = conn.execute(beat).fetchall()
        deadline = time.monotonic() + TIMEOUT
        while conn.execute(beat).fetchall() == first:
            assert time.monotonic() < deadline, "the heartbeat did not resume"
            time.sleep(0.05)
    # The survivor's row only: `quitter`'s close, held back by the outage, was written. At
    # once as a rule; within two sweeps if this node was declared dead before it beat again.
    deadline = time.monotonic() + 2 * SWEEP_INTERVAL + TIMEOUT
    while True:
        listed = node.cli("sessions")
        assert listed.returncode == 0, listed.stderr
        rows = [line.split()[1:2] for line in listed.stdout.splitlines() if USER in line]
        if rows == [["pop-a"]]:
            break
        assert time.monotonic() < deadline, listed.stdout
    assert node.proc.pid == pid
    assert_alive(node)
    assert survivor.cmd("QUIT").startswith(b"+OK")
    survivor.close()
    client = pop(port)
    assert client.stat()[0] == 4  # one, two, three and the XTND XMIT to itself
    client.quit()
    client.close()


def test_outage_during_a_delivery_is_never_acknowledged(db: PgServer, node: Node) -> None:
    """The database stops while a delivery's transaction is inside it (held there by an
    administrator's lock, so the moment is certain): the LMTP client gets 451, the message
    was not stored, and the retry that follows is delivered once."""
    port = node.ports["POP3"]
    lmtp = smtplib.LMTP("127.0.0.1", node.ports["LMTP"], timeout=TIMEOUT)
    admin = psycopg.connect(f"host=127.0.0.1 port={db.port} user=postgres dbname=cgpop")
    try:
        lmtp.ehlo("mta.test")
        assert lmtp.mail("s@remote.test")[0] == 250
        assert lmtp.rcpt(USER)[0] == 250
        admin.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")  # held: no commit
        replies: list[tuple[int, bytes]] = []
        sender = threading.Thread(target=lambda: replies.append(lmtp.data(message("held"))))
        sender.start()
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        deadline = time.monotonic() + TIMEOUT
        while admin.execute(waiting).fetchone() == (0,):
            assert time.monotonic() < deadline, "the delivery never reached the database"
            time.sleep(0.02)
        db.stop("immediate")
        sender.join(TIMEOUT)
        assert replies and replies[0][0] == 451, replies
        assert replies[0][1].startswith(b"4.3.0 "), replies
        assert lmtp.noop()[0] == 250  # the LMTP session goes on
    finally:
        admin.close()
        lmtp.close()
        if not db.running():
            db.start(same_port=True)
    wait_for_service(port)
    client = pop(port)
    assert client.stat()[0] == 0  # nothing was acknowledged, and nothing was stored
    client.quit()
    client.close()
    assert lmtp_send(node, "held") == {}  # the MTA's retry
    client = pop(port)
    assert client.stat()[0] == 1
    client.quit()
    client.close()
    assert_alive(node)
