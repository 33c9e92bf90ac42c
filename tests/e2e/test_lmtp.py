"""Delivery over LMTP (RFC 2033) with the standard library's smtplib.LMTP, read back by POP3."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator

import pytest

from tests.conftest import LiveServer, message
from tests.e2e.helpers import TIMEOUT, pop, uids

ANN = "ann@example.com"


@pytest.fixture
def lmtp(server: LiveServer) -> Iterator[smtplib.LMTP]:
    server.add_account(ANN, "annpw")
    client = smtplib.LMTP(server.host, server.port("lmtp"), timeout=TIMEOUT)
    yield client
    client.close()


def x_real_to(server: LiveServer, address: str) -> list[bytes]:
    client = pop(server, address, "secret" if address.startswith("joe") else "annpw")
    try:
        count = client.stat()[0]
        return [
            line
            for n in range(1, count + 1)
            for line in client.top(n, 0)[1]
            if line.startswith(b"X-Real-To:")
        ]
    finally:
        client.quit()


def test_lhlo(server: LiveServer, lmtp: smtplib.LMTP) -> None:
    code, text = lmtp.ehlo("client.test")
    assert code == 250
    assert text.splitlines()[0] == server.config.server.hostname.encode()
    # RFC 2033 section 5: an LMTP server MUST implement PIPELINING.
    assert lmtp.has_extn("pipelining")
    assert lmtp.mail("sender@remote.test")[0] == 250
    # HELO and EHLO are not LMTP commands.
    assert lmtp.docmd("HELO client.test")[0] == 500
    assert lmtp.docmd("EHLO client.test")[0] == 500


def test_pipelined_transaction(server: LiveServer, lmtp: smtplib.LMTP) -> None:
    with (
        socket.create_connection((server.host, server.port("lmtp")), TIMEOUT) as sock,
        sock.makefile("rb") as f,
    ):
        assert f.readline().startswith(b"220 ")
        sock.sendall(
            b"LHLO client.test\r\nMAIL FROM:<a@remote.test>\r\n"
            b"RCPT TO:<joe@example.com>\r\nRCPT TO:<nobody@example.com>\r\n"
            b"RCPT TO:<ann@example.com>\r\nDATA\r\n"
        )
        while f.readline().startswith(b"250-"):
            pass
        assert [f.readline()[:3] for _ in range(5)] == [b"250", b"250", b"550", b"250", b"354"]
        sock.sendall(b"Subject: piped\r\n\r\nhi\r\n.\r\nNOOP\r\nQUIT\r\n")
        rest = f.read().splitlines()
    assert rest == [
        b"250 2.0.0 <joe@example.com> delivered",
        b"250 2.0.0 <ann@example.com> delivered",
        b"250 OK",
        b"221 Bye",
    ]


def test_unknown_recipient_refused_at_rcpt(server: LiveServer, lmtp: smtplib.LMTP) -> None:
    lmtp.ehlo("client.test")
    assert lmtp.mail("sender@remote.test")[0] == 250
    assert lmtp.rcpt("joe@example.com")[0] == 250
    code, text = lmtp.rcpt("nobody@example.com")
    assert code == 550
    assert b"nobody@example.com" in text
    code, _ = lmtp.data(message("one known"))
    assert code == 250
    lmtp.quit()
    assert len(uids(server)) == 1
    assert x_real_to(server, "joe@example.com") == [b"X-Real-To: <joe@example.com>"]


def test_one_reply_per_recipient_after_data(server: LiveServer, lmtp: smtplib.LMTP) -> None:
    lmtp.ehlo("client.test")
    lmtp.mail("sender@remote.test")
    given = ["Joe@Example.COM", ANN, "joe"]
    for rcpt in given:
        assert lmtp.rcpt(rcpt)[0] == 250
    # No Message-ID: joe gets two copies, not one copy and a suppressed duplicate.
    first = lmtp.data(message("to three"))
    replies = [first] + [lmtp.getreply() for _ in given[1:]]
    assert [code for code, _ in replies] == [250, 250, 250]
    # In recipient order, each naming its recipient.
    for (_, text), rcpt in zip(replies, given, strict=True):
        assert f"<{rcpt}>".encode() in text
    # The session is still in step: the next command gets its own reply.
    assert lmtp.noop()[0] == 250
    lmtp.quit()
    # X-Real-To is the envelope recipient as given, one copy each (joe gets two).
    assert sorted(x_real_to(server, "joe@example.com")) == [
        b"X-Real-To: <Joe@Example.COM>",
        b"X-Real-To: <joe>",
    ]
    assert x_real_to(server, ANN) == [f"X-Real-To: <{ANN}>".encode()]


def test_sendmail_to_two_recipients(server: LiveServer, lmtp: smtplib.LMTP) -> None:
    refused = lmtp.sendmail(
        "sender@remote.test", ["joe@example.com", ANN], message("via sendmail", "hello\n")
    )
    assert refused == {}
    assert lmtp.noop()[0] == 250  # the second recipient's reply was not left in the stream
    lmtp.quit()
    joe = pop(server)
    try:
        lines = joe.retr(1)[1]
        assert lines[:2] == [b"Return-Path: <sender@remote.test>", b"X-Real-To: <joe@example.com>"]
    finally:
        joe.quit()


def test_duplicate_suppressed(server: LiveServer, lmtp: smtplib.LMTP) -> None:
    msg = message("dup", message_id="<same@remote.test>")
    for attempt in range(2):
        lmtp.ehlo("client.test")
        lmtp.mail("sender@remote.test")
        lmtp.rcpt("joe@example.com")
        code, text = lmtp.data(msg)
        assert code == 250
        if attempt:
            assert b"duplicate" in text
        lmtp.rset()
    lmtp.quit()
    assert len(uids(server)) == 1
    # Another recipient still gets its copy.
    server.deliver(ANN, msg)
    assert len(uids(server, ANN)) == 1
    # Mail without the same Message-ID is not suppressed.
    server.deliver("joe@example.com", message("dup", message_id="<other@remote.test>"))
    assert len(uids(server)) == 2


def test_addresses_parsed_alike_when_repeated(server: LiveServer, lmtp: smtplib.LMTP) -> None:
    """MAIL and RCPT arguments are parsed once and remembered (cgpop/lmtp.py): a repeated
    malformed address is refused every time, a repeated good one accepted every time."""
    lmtp.ehlo("client.test")
    for _ in range(2):
        assert lmtp.docmd("MAIL FROM:<bad@@remote.test>")[0] == 553
        assert lmtp.mail("sender@remote.test")[0] == 250
        assert lmtp.docmd("RCPT TO:<ann@@example.com>")[0] == 553
        assert lmtp.docmd("RCPT TO:<ann@example.com>")[0] == 250
        assert lmtp.rset()[0] == 250
