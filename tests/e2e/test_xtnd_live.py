"""XTND XMIT over a real POP session against a live server: local delivery, relay to an aiosmtpd
sink, MX resolution against a DNS server on loopback, retries, bounces, refusals, the body's
framing, and the queue surviving a restart."""

from __future__ import annotations

import asyncio
import email
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.e2e.helpers import TIMEOUT, Raw, pop, uids
from tests.xtnd.conftest import Sink, SinkHandler, Zone, _start, start_dns
from xtnd.submit import Submitter

FAST = {"retry_schedule": [0.2], "queue_poll_interval": 0.2}


class FlakyHandler(SinkHandler):
    """Answers 450 to the first RCPT of each "flaky" address, then accepts."""

    def __init__(self) -> None:
        super().__init__()
        self.rcpts: list[str] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        self.rcpts.append(address)
        if address.startswith("flaky") and self.rcpts.count(address) == 1:
            return "450 4.2.1 Mailbox busy, try later"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


@pytest.fixture
def sink() -> Iterator[Sink]:
    yield from _start(FlakyHandler())


def relay_to(sink: Sink, **extra: Any) -> dict[str, Any]:
    return {"relay": f"127.0.0.1:{sink.port}", **FAST, **extra}


def wait_for(what: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll until `what()` is truthy: the relay worker runs on its own schedule."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the relay worker")
        time.sleep(0.02)


def stuff(message: bytes) -> bytes:
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


def xmit(raw: Raw, message: bytes) -> bytes:
    assert raw.cmd("XTND XMIT") == b"+OK Start sending message.\r\n"
    raw.send(stuff(message) + b".\r\n")
    return raw.line()


def submit(server: LiveServer, message: bytes, user: str = "joe@example.com") -> bytes:
    with Raw(server) as raw:
        assert raw.login(user, "secret").startswith(b"+OK")
        return xmit(raw, message)


def msg(to: str, *, sender: str = "joe@example.com", extra: str = "", body: str = "Hi.\n") -> bytes:
    return (f"From: Joe <{sender}>\nTo: {to}\n{extra}Subject: test\n\n{body}").encode()


def retr_all(server: LiveServer, user: str) -> list[bytes]:
    client = pop(server, user, "secret")
    try:
        count = len(client.list()[1])
        return [b"\r\n".join(client.retr(i)[1]) for i in range(1, count + 1)]
    finally:
        client.quit()


def queue_empty(server: LiveServer) -> bool:
    return not server.call(server.store.list_queue)


def test_capa_and_local_delivery(server_factory: Callable[..., LiveServer], sink: Sink) -> None:
    server = server_factory(xtnd=relay_to(sink))
    server.add_account("joe@example.com", "secret")
    server.add_account("ann@example.com", "secret")
    with Raw(server) as raw:
        raw.login()
        assert raw.cmd("CAPA").startswith(b"+OK")
        assert b"XTND\r\n" in raw.multi()
        assert raw.cmd("XTND FOO") == b"-ERR unknown XTND command\r\n"
        assert xmit(raw, msg("Ann <ann@example.com>")) == b"+OK Message sent successfully\r\n"
        refused = xmit(raw, msg("ann@example.com, nobody@example.com"))
        assert refused.startswith(b"-ERR") and b"nobody@example.com" in refused
    [got] = retr_all(server, "ann@example.com")
    parsed = email.message_from_bytes(got)
    assert parsed["X-Real-To"] == "<ann@example.com>"
    assert parsed["Return-Path"] == "<joe@example.com>"
    assert "XTND" in parsed["Received"] and "joe@example.com" in parsed["Received"]
    assert parsed["Message-ID"] and parsed["Date"]
    assert sink.handler.messages == []


def test_xtnd_not_offered_when_disabled(server_factory: Callable[..., LiveServer]) -> None:
    server = server_factory(xtnd={"enabled": False})
    server.add_account("joe@example.com", "secret")
    with Raw(server) as raw:
        raw.login()
        raw.cmd("CAPA")
        assert b"XTND\r\n" not in raw.multi()
        assert raw.cmd("XTND XMIT").startswith(b"-ERR")


def test_relay_strips_bcc_and_sets_envelope(
    server_factory: Callable[..., LiveServer], sink: Sink
) -> None:
    server = server_factory(xtnd=relay_to(sink))
    server.add_account("joe@example.com", "secret")
    server.add_account("ann@example.com", "secret")
    message = msg(
        "ann@example.com, carol@example.org",
        extra="Cc: <dave@example.net>\nBcc: hidden@example.net, ann@example.com\n",
    )
    assert submit(server, message) == b"+OK Message sent successfully\r\n"
    [relayed] = wait_for(lambda: sink.handler.messages)
    assert relayed.mail_from == "joe@example.com"
    assert sorted(relayed.rcpt_tos) == [
        "carol@example.org",
        "dave@example.net",
        "hidden@example.net",
    ]
    assert b"Bcc" not in relayed.content and b"hidden@" not in relayed.content
    assert b"\r\nSubject: test\r\n" in relayed.content
    [local] = retr_all(server, "ann@example.com")
    assert b"Bcc" not in local and b"hidden@" not in local
    wait_for(lambda: queue_empty(server))


class _DnsThread:
    """The fake DNS server of tests/xtnd on its own event loop in a thread."""

    def __init__(self, zone: Zone) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.transport, self.protocol, self.port = asyncio.run_coroutine_threadsafe(
            start_dns(zone), self.loop
        ).result(TIMEOUT)

    def close(self) -> None:
        async def shut() -> None:
            self.transport.close()
            # The socket is released by a callback the close schedules; let it run.
            await asyncio.sleep(0)
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


def test_mx_resolution_and_null_mx_bounce(
    server_factory: Callable[..., LiveServer], sink: Sink
) -> None:
    dns = _DnsThread(
        {
            ("example.org.", "MX"): ["10 mx.example.org."],
            ("mx.example.org.", "A"): ["127.0.0.1"],
            ("nomail.example.net.", "MX"): ["0 ."],
        }
    )
    try:
        server = server_factory(
            xtnd={
                "dns_servers": ["127.0.0.1"],
                "dns_port": dns.port,
                "smtp_port": sink.port,
                **FAST,
            }
        )
        server.add_account("joe@example.com", "secret")
        message = msg("user@example.org", extra="Cc: who@nomail.example.net\n")
        assert submit(server, message) == b"+OK Message sent successfully\r\n"
        [relayed] = wait_for(lambda: sink.handler.messages)
        assert relayed.rcpt_tos == ["user@example.org"]
        assert ("example.org.", "MX") in dns.protocol.queries
        wait_for(lambda: uids(server))
        [bounce] = retr_all(server, "joe@example.com")
        assert b"Final-Recipient: rfc822; who@nomail.example.net" in bounce
        assert b"null MX" in bounce and b"Status: 5.1.2" in bounce
        wait_for(lambda: queue_empty(server))
    finally:
        dns.close()


def test_retry_after_temporary_failure(
    server_factory: Callable[..., LiveServer], sink: Sink
) -> None:
    server = server_factory(xtnd=relay_to(sink))
    server.add_account("joe@example.com", "secret")
    assert submit(server, msg("flaky@example.org")) == b"+OK Message sent successfully\r\n"
    [relayed] = wait_for(lambda: sink.handler.messages)
    assert relayed.rcpt_tos == ["flaky@example.org"]
    handler = sink.handler
    assert isinstance(handler, FlakyHandler)
    assert handler.rcpts == ["flaky@example.org", "flaky@example.org"]
    wait_for(lambda: queue_empty(server))
    assert uids(server) == []  # a retried message is no bounce


def test_bounce_after_permanent_failure(
    server_factory: Callable[..., LiveServer], sink: Sink
) -> None:
    server = server_factory(xtnd=relay_to(sink))
    server.add_account("joe@example.com", "secret")
    message = msg("perm@example.org, ok@example.org", body="Original body.\n")
    assert submit(server, message) == b"+OK Message sent successfully\r\n"
    wait_for(lambda: uids(server))
    [bounce] = retr_all(server, "joe@example.com")
    parsed = email.message_from_bytes(bounce)
    assert parsed["Return-Path"] == "<>"
    assert parsed.get_content_type() == "multipart/report"
    assert b"Final-Recipient: rfc822; perm@example.org" in bounce
    assert b"Status: 5.1.1" in bounce and b"ok@example.org" not in bounce.split(b"Subject")[0]
    assert b"Original body" not in bounce  # headers only (RFC 6522)
    [relayed] = sink.handler.messages
    assert relayed.rcpt_tos == ["ok@example.org"]
    wait_for(lambda: queue_empty(server))


def test_from_check_and_rate_limit(server_factory: Callable[..., LiveServer], sink: Sink) -> None:
    server = server_factory(
        xtnd=relay_to(sink, allowed_from=["joe@personal.example"], rate_messages_per_hour=3)
    )
    server.add_account("joe@example.com", "secret")
    server.add_account("boss@example.com", "secret")
    server.call(server.store.add_route, "joe.smith@example.com", "joe@example.com")
    server.call(server.store.add_route, "ceo@example.com", "boss@example.com")
    with Raw(server) as raw:
        raw.login()
        for forged in ("boss@example.com", "ceo@example.com", "joe@example.org"):
            reply = xmit(raw, msg("ann@example.org", sender=forged))
            assert reply.startswith(b"-ERR") and forged.encode() in reply, reply
        for mine in ("joe@example.com", "joe.smith@example.com", "joe@personal.example"):
            assert xmit(raw, msg("ann@example.org", sender=mine)).startswith(b"+OK"), mine
        limited = xmit(raw, msg("ann@example.org"))
        assert limited.startswith(b"-ERR") and b"rate limit" in limited
        assert raw.cmd("NOOP").startswith(b"+OK")
    wait_for(lambda: len(sink.handler.messages) == 3)
    senders = [m.content.split(b"From: Joe <")[1].split(b">")[0] for m in sink.handler.messages]
    assert sorted(senders) == [
        b"joe.smith@example.com",
        b"joe@example.com",
        b"joe@personal.example",
    ]


def test_oversized_body_refused_without_desync(
    server_factory: Callable[..., LiveServer], sink: Sink
) -> None:
    server = server_factory(xtnd=relay_to(sink, max_message_size=2000))
    server.add_account("joe@example.com", "secret")
    with Raw(server) as raw:
        raw.login()
        big = msg("ann@example.org", body=("x" * 70 + "\n") * 50)  # about 3600 octets
        reply = xmit(raw, big)
        assert reply.startswith(b"-ERR") and b"too large" in reply
        assert raw.cmd("NOOP").startswith(b"+OK")
        assert xmit(raw, msg("ann@example.org")) == b"+OK Message sent successfully\r\n"
    wait_for(lambda: sink.handler.messages)
    assert len(sink.handler.messages) == 1


def test_dot_unstuffing_and_smuggling_shapes(
    server_factory: Callable[..., LiveServer], sink: Sink
) -> None:
    server = server_factory(xtnd=relay_to(sink))
    server.add_account("joe@example.com", "secret")
    server.add_account("ann@example.com", "secret")
    with Raw(server) as raw:
        raw.login()
        assert raw.cmd("XTND XMIT").startswith(b"+OK")
        # Everything up to the lone ".\r\n" is data: bare-LF and bare-CR "terminators" are the
        # SMTP-smuggling shapes; a following NOOP must be answered as a command, once.
        raw.send(
            b"From: joe@example.com\r\nTo: ann@example.com\r\nSubject: s\r\n\r\n"
            b"..leading dot\r\n"
            b"one\n.\r\nNOOP smuggled-lf\r\n"
            b"two\r\n.\nNOOP smuggled-dot-lf\r\n"
            b"three\r.\r\nNOOP smuggled-cr\r\n"
            b".\r\n"
            b"NOOP\r\n"
        )
        assert raw.line() == b"+OK Message sent successfully\r\n"
        assert raw.line().startswith(b"+OK")  # the real NOOP
        assert raw.cmd("STAT").startswith(b"+OK")
    [got] = retr_all(server, "ann@example.com")
    body = got.split(b"\r\n\r\n", 1)[1]
    lines = body.split(b"\r\n")
    assert lines[0] == b".leading dot"
    for text in (b"NOOP smuggled-lf", b"NOOP smuggled-dot-lf", b"NOOP smuggled-cr"):
        assert text in lines
    assert sink.handler.messages == []


def test_queue_survives_restart(
    server_factory: Callable[..., LiveServer], sink: Sink, tmp_path: Path
) -> None:
    # A port where nothing listens: a bound, unlistened socket refuses connections.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    try:
        data_dir = tmp_path / "restart"
        dead_relay = f"127.0.0.1:{dead.getsockname()[1]}"
        first = server_factory(
            data_dir,
            xtnd={"relay": dead_relay, "retry_schedule": [0.5], "queue_poll_interval": 0.2},
        )
        first.add_account("joe@example.com", "secret")
        assert submit(first, msg("far@example.org")) == b"+OK Message sent successfully\r\n"
        # A refused connection is a temporary failure: queued for a retry, no bounce.
        [entry] = wait_for(
            lambda: [
                e
                for e in first.call(first.store.list_queue)
                if e.recipients[0].attempts >= 1 and e.recipients[0].state == "queued"
            ]
        )
        assert (entry.recipients[0].last_error or "").startswith("4.")
        first.stop()
    finally:
        dead.close()
    assert sink.handler.messages == []
    second = server_factory(data_dir, xtnd=relay_to(sink))
    [relayed] = wait_for(lambda: sink.handler.messages)
    assert relayed.rcpt_tos == ["far@example.org"] and relayed.mail_from == "joe@example.com"
    wait_for(lambda: queue_empty(second))


def test_poplib_client_can_submit(server_factory: Callable[..., LiveServer], sink: Sink) -> None:
    """poplib has no XTND helper; its low-level _shortcmd/_putline are the real client here."""
    server = server_factory(xtnd=relay_to(sink))
    server.add_account("joe@example.com", "secret")
    client: Any = pop(server)  # the private helpers below are not in typeshed
    try:
        assert client._shortcmd("XTND XMIT").startswith(b"+OK")
        for line in stuff(msg("pal@example.org", body=".dot\n")).split(b"\r\n")[:-1]:
            client._putline(line)
        assert client._shortcmd(".") == b"+OK Message sent successfully"
    finally:
        client.quit()
    [relayed] = wait_for(lambda: sink.handler.messages)
    assert b"\r\n.dot\r\n" in relayed.content


@pytest.mark.parametrize("step", ["addresses", "enqueue"])
def test_store_failure_is_a_temporary_error(
    server_factory: Callable[..., LiveServer],
    sink: Sink,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    """SQLite failing while reading the account's addresses or while queueing: -ERR [SYS/TEMP]
    and the session goes on; nothing is relayed."""
    server = server_factory(xtnd=relay_to(sink))
    server.add_account("joe@example.com", "secret")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    if step == "addresses":
        monkeypatch.setattr(Submitter, "addresses_of", boom)
    else:
        monkeypatch.setattr(type(server.store), "enqueue", boom)
    with Raw(server) as raw:
        raw.login()
        reply = xmit(raw, msg("far@example.org"))
        assert reply.startswith(b"-ERR [SYS/TEMP] "), reply
        assert b"sqlite" not in reply.lower()
        assert raw.cmd("NOOP").startswith(b"+OK")
        monkeypatch.undo()
        assert xmit(raw, msg("far@example.org")) == b"+OK Message sent successfully\r\n"
    [relayed] = wait_for(lambda: sink.handler.messages)
    assert relayed.rcpt_tos == ["far@example.org"]


def test_unknown_recipients_of_routed_domains_are_refused(
    server_factory: Callable[..., LiveServer], sink: Sink
) -> None:
    """An address that a routing record claims but that leads to no mailbox is refused, not
    relayed; one in a domain nothing here claims is relayed."""
    server = server_factory(xtnd=relay_to(sink))
    server.add_account("joe@example.com", "secret")
    server.add_account("ann@example.com", "secret")
    server.call(server.store.add_route, "*@client.example", "*@example.com")
    server.call(server.store.add_route, "gone@partner.example", "left@example.com")
    with Raw(server) as raw:
        raw.login()
        for unknown in ("nobody@client.example", "gone@partner.example", "nobody@example.com"):
            reply = xmit(raw, msg(unknown))
            assert reply == f"-ERR unknown recipient {unknown}\r\n".encode(), reply
        assert xmit(raw, msg("ann@client.example")).startswith(b"+OK")
        assert xmit(raw, msg("other@partner.example")).startswith(b"+OK")
    [got] = retr_all(server, "ann@example.com")
    assert b"X-Real-To: <ann@client.example>" in got
    [relayed] = wait_for(lambda: sink.handler.messages)
    assert relayed.rcpt_tos == ["other@partner.example"]


def test_new_route_is_a_usable_from_address_at_once(
    server_factory: Callable[..., LiveServer], sink: Sink
) -> None:
    """The From addresses are cached per account until the directory changes."""
    server = server_factory(xtnd=relay_to(sink))
    server.add_account("joe@example.com", "secret")
    with Raw(server) as raw:
        raw.login()
        assert xmit(raw, msg("far@example.org", sender="js@example.com")).startswith(b"-ERR")
        server.call(server.store.add_route, "js@example.com", "joe@example.com")
        assert xmit(raw, msg("far@example.org", sender="js@example.com")).startswith(b"+OK")
        server.call(server.store.remove_route, "js@example.com")
        assert xmit(raw, msg("far@example.org", sender="js@example.com")).startswith(b"-ERR")


def test_over_the_rate_limit_delivers_nothing_locally(
    server_factory: Callable[..., LiveServer], sink: Sink
) -> None:
    server = server_factory(xtnd=relay_to(sink, rate_messages_per_hour=1))
    server.add_account("joe@example.com", "secret")
    server.add_account("ann@example.com", "secret")
    with Raw(server) as raw:
        raw.login()
        assert xmit(raw, msg("ann@example.com")).startswith(b"+OK")
        limited = xmit(raw, msg("ann@example.com, far@example.org"))
        assert limited.startswith(b"-ERR [SYS/TEMP] rate limit"), limited
    assert len(retr_all(server, "ann@example.com")) == 1
    assert server.call(server.store.list_queue) == []


def test_parallel_sessions_cannot_deliver_past_the_rate_limit(
    server_factory: Callable[..., LiveServer], sink: Sink
) -> None:
    """Issue 10, defect 3: 48 sessions of one account submit at once against a limit of 30:
    exactly 30 are accepted and exactly 30 copies reach the local recipient."""
    server = server_factory(
        xtnd=relay_to(sink, rate_messages_per_hour=30), pop3={"max_per_ip": 100}
    )
    server.add_account("joe@example.com", "secret")
    server.add_account("ann@example.com", "secret")
    sessions = 48
    ready = threading.Barrier(sessions)
    replies: list[bytes] = []

    def one(n: int) -> None:
        with Raw(server) as raw:
            raw.login()
            assert raw.cmd("XTND XMIT") == b"+OK Start sending message.\r\n"
            ready.wait(6 * TIMEOUT)
            raw.send(stuff(msg("ann@example.com", body=f"number {n}\n")) + b".\r\n")
            replies.append(raw.line())

    threads = [threading.Thread(target=one, args=(n,)) for n in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(8 * TIMEOUT)
    assert len(replies) == sessions
    accepted = [r for r in replies if r.startswith(b"+OK")]
    assert len(accepted) == 30, replies
    assert all(r.startswith(b"-ERR [SYS/TEMP] rate limit") for r in replies if r not in accepted)
    assert len(retr_all(server, "ann@example.com")) == 30


def test_a_failed_submission_gives_its_rate_limit_slot_back(
    server_factory: Callable[..., LiveServer], sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = server_factory(xtnd=relay_to(sink, rate_messages_per_hour=1))
    server.add_account("joe@example.com", "secret")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(type(server.store), "enqueue", boom)
    with Raw(server) as raw:
        raw.login()
        assert xmit(raw, msg("far@example.org")).startswith(b"-ERR [SYS/TEMP] ")
        monkeypatch.undo()
        assert xmit(raw, msg("far@example.org")) == b"+OK Message sent successfully\r\n"
        assert xmit(raw, msg("far@example.org")).startswith(b"-ERR [SYS/TEMP] rate limit")


@pytest.mark.parametrize(
    "from_field",
    [
        b"From: joe@example.com <boss@example.com>\r\n",
        b"From: joe@example.com\r\n <boss@example.com>\r\n",  # folded
        b"From: joe@example.com)<boss@example.com>\r\n",
    ],
    ids=["name-then-angle", "folded", "paren"],
)
def test_malformed_from_refused_not_relayed(
    server_factory: Callable[..., LiveServer], sink: Sink, from_field: bytes
) -> None:
    """Issue 10 defect 2: Python's parser reads joe in these From fields, other parsers boss.
    The submission is refused with a reason, nothing is relayed or stored, the session goes on."""
    server = server_factory(xtnd=relay_to(sink))
    server.add_account("joe@example.com", "secret")
    server.add_account("boss@example.com", "secret")
    forged = (
        from_field + b"To: ann@example.org, boss@example.com\r\nSubject: pay now\r\n\r\nHi.\r\n"
    )
    with Raw(server) as raw:
        raw.login()
        reply = xmit(raw, forged)
        assert reply.startswith(b"-ERR Malformed From field ("), reply
        assert b"would not agree on its address" in reply
        assert xmit(raw, msg("ann@example.org")) == b"+OK Message sent successfully\r\n"
    wait_for(lambda: sink.handler.messages)
    [relayed] = sink.handler.messages
    assert b"pay now" not in relayed.content
    assert uids(server, "boss@example.com") == []
