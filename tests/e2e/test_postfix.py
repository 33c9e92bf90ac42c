"""A real MTA on both sides (issue 12, section 6): mail sent by SMTP into a real Postfix reaches
cgpop over LMTP (`lmtp:unix:` and `lmtp:inet:`) and is read by POP; a message submitted with
XTND XMIT leaves cgpop through that Postfix (`[xtnd] relay`) and arrives at an SMTP sink behind
it (Postfix's `relayhost`). The Postfix instance is the test's own (tests/e2e/postfix.py)."""

from __future__ import annotations

import email
import email.message
import smtplib
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import LiveServer
from tests.e2e.helpers import TIMEOUT, Raw, pop
from tests.e2e.postfix import Postfix, skip_unless_possible
from tests.xtnd.conftest import Sink, SinkHandler, _start

JOE, ANN = "joe@example.com", "ann@example.com"


@pytest.fixture
def sink() -> Iterator[Sink]:
    """The SMTP server behind Postfix (its relayhost): mail Postfix sends on lands here."""
    yield from _start(SinkHandler())


@pytest.fixture
def postfix(sink: Sink, server_factory: Callable[..., LiveServer]) -> Iterator[Postfix]:
    """Depends on the sink and on cgpop's factory so that it stops first: Postfix never
    connects to a peer that is shutting down."""
    skip_unless_possible()
    instance = Postfix()
    try:
        yield instance
    finally:
        instance.stop()  # even when the test failed


def start_pair(
    server_factory: Callable[..., LiveServer], postfix: Postfix, sink: Sink, transport: str
) -> LiveServer:
    """cgpop (LMTP on TCP and on postfix.lmtp_socket, XTND relay to Postfix's smtpd), then
    Postfix delivering example.com to cgpop over `transport` ("unix" or "inet")."""
    srv = server_factory(
        lmtp={"listen": ["127.0.0.1:0", f"unix:{postfix.lmtp_socket}"]},
        xtnd={
            "relay": f"127.0.0.1:{postfix.smtp_port}",
            "retry_schedule": [0.5],
            "queue_poll_interval": 0.2,
        },
    )
    srv.add_account(JOE, "secret")
    srv.add_account(ANN, "secret")
    lmtp = {
        "unix": f"lmtp:unix:{postfix.lmtp_socket}",
        "inet": f"lmtp:inet:127.0.0.1:{srv.port('lmtp')}",
    }[transport]
    postfix.configure(
        virtual_mailbox_domains="example.com",
        virtual_transport=lmtp,
        relayhost=f"[127.0.0.1]:{sink.port}",
    )
    postfix.start()
    return srv


def inbox(srv: LiveServer, user: str) -> list[email.message.Message]:
    client = pop(srv, user)
    try:
        count = client.stat()[0]
        return [
            email.message_from_bytes(b"\r\n".join(client.retr(n)[1])) for n in range(1, count + 1)
        ]
    finally:
        client.quit()


def message_count(srv: LiveServer, user: str) -> int:
    client = pop(srv, user)
    try:
        return int(client.stat()[0])
    finally:
        client.quit()


@pytest.mark.parametrize("transport", ["unix", "inet"])
def test_postfix_delivers_over_lmtp(
    server_factory: Callable[..., LiveServer], postfix: Postfix, sink: Sink, transport: str
) -> None:
    srv = start_pair(server_factory, postfix, sink, transport)
    body = "Hello from the outside.\n.leading dot\n"
    mail = (
        f"From: Alice <alice@remote.test>\nTo: Joe <{JOE}>\nCc: {ANN}\n"
        f"Subject: via postfix {transport}\nMessage-ID: <pf-{transport}@remote.test>\n\n{body}"
    )
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=TIMEOUT) as smtp:
        refused = smtp.sendmail("alice@remote.test", [JOE, ANN, "nobody@example.com"], mail)
    assert refused == {}  # Postfix takes all three; cgpop refuses nobody at RCPT
    postfix.wait_for(lambda: message_count(srv, JOE) and message_count(srv, ANN), "delivery")
    for user in (JOE, ANN):
        [got] = inbox(srv, user)
        assert got["Subject"] == f"via postfix {transport}"
        assert got["Return-Path"] == "<alice@remote.test>"
        assert got["X-Real-To"] == f"<{user}>"
        assert "by mx.test.local (Postfix)" in got["Received"]
        # poplib hands back the lines without their CRLF, un-stuffed.
        assert got.get_payload() == "Hello from the outside.\r\n.leading dot"
    # The unknown recipient: Postfix takes cgpop's 550 as final and bounces to the sender,
    # through its relayhost (the sink).
    postfix.wait_for(lambda: sink.handler.messages, "the bounce for nobody@example.com")
    [bounce] = sink.handler.messages
    assert bounce.mail_from == "<>" and bounce.rcpt_tos == ["alice@remote.test"]
    assert b"<nobody@example.com>" in bounce.content
    assert b"550" in bounce.content
    assert f"relay={'mx.test.local' if transport == 'unix' else '127.0.0.1'}" in postfix.log()


def test_xtnd_xmit_relayed_through_postfix(
    server_factory: Callable[..., LiveServer], postfix: Postfix, sink: Sink
) -> None:
    srv = start_pair(server_factory, postfix, sink, "unix")
    with Raw(srv) as raw:
        assert raw.login(JOE, "secret").startswith(b"+OK")
        assert raw.cmd("XTND XMIT") == b"+OK Start sending message.\r\n"
        raw.send(
            b"From: Joe <joe@example.com>\r\nTo: Carol <carol@example.org>, ann@example.com\r\n"
            b"Subject: out through postfix\r\n\r\nHi Carol.\r\n.\r\n"
        )
        assert raw.line() == b"+OK Message sent successfully\r\n"
    postfix.wait_for(lambda: sink.handler.messages, "the relayed message at the sink")
    [out] = sink.handler.messages
    assert out.mail_from == JOE and out.rcpt_tos == ["carol@example.org"]
    relayed = email.message_from_bytes(out.content)
    assert relayed["Subject"] == "out through postfix"
    # Postfix's Received line on top: it went through Postfix, from cgpop on loopback.
    assert "by mx.test.local (Postfix)" in relayed.get_all("Received")[0]
    assert "from test.local (localhost [127.0.0.1])" in relayed.get_all("Received")[0]
    assert b"Hi Carol." in out.content
    # The local recipient got its copy directly (not through Postfix).
    [local] = inbox(srv, ANN)
    assert local["Subject"] == "out through postfix"
    assert local["Return-Path"] == "<joe@example.com>"
