"""Quotas against a live server (issue 12): LMTP per-recipient 452/552, XTND XMIT naming the
full mailbox, reading/DELE/QUIT never refused, the warning alert at the next login, and
`[quota]` re-read on SIGHUP."""

from __future__ import annotations

import asyncio
import dataclasses
import poplib
import smtplib
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import LiveServer, message
from tests.e2e.helpers import TIMEOUT, Raw, pop
from tests.e2e.test_xtnd_live import msg, xmit

ANN = "ann@example.com"


def lmtp_send(server: LiveServer, rcpts: list[str], data: bytes) -> list[bytes]:
    """One LMTP transaction on a raw socket: the per-recipient replies after DATA."""
    with (
        socket.create_connection((server.host, server.port("lmtp")), TIMEOUT) as sock,
        sock.makefile("rb") as f,
    ):
        assert f.readline().startswith(b"220 ")
        sock.sendall(b"LHLO client.test\r\n")
        while f.readline().startswith(b"250-"):
            pass
        sock.sendall(b"MAIL FROM:<a@remote.test>\r\n")
        assert f.readline().startswith(b"250")
        for rcpt in rcpts:
            sock.sendall(f"RCPT TO:<{rcpt}>\r\n".encode())
            assert f.readline().startswith(b"250")
        sock.sendall(b"DATA\r\n")
        assert f.readline().startswith(b"354")
        sock.sendall(data.replace(b"\n", b"\r\n") + b".\r\n")
        replies = [f.readline().rstrip(b"\r\n") for _ in rcpts]
        sock.sendall(b"QUIT\r\n")
        return replies


@pytest.fixture
def two(server: LiveServer) -> LiveServer:
    server.add_account(ANN, "secret")
    return server


def test_lmtp_tempfails_only_the_full_recipient(two: LiveServer) -> None:
    two.call(two.store.set_quota, "example.com", "joe", None, 1)
    assert lmtp_send(two, ["joe@example.com", ANN], message("first")) == [
        b"250 2.0.0 <joe@example.com> delivered",
        b"250 2.0.0 <ann@example.com> delivered",
    ]
    assert lmtp_send(two, ["joe@example.com", ANN], message("second")) == [
        b"452 4.2.2 <joe@example.com> mailbox full",
        b"250 2.0.0 <ann@example.com> delivered",
    ]
    # smtplib.LMTP, as an MTA would: a temporary failure it keeps the message for.
    client = smtplib.LMTP(two.host, two.port("lmtp"), timeout=TIMEOUT)
    try:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("a@remote.test", ["joe@example.com"], message("third"))
        assert refused.value.smtp_code == 452
    finally:
        client.close()
    assert two.call(two.store.get_quota, "example.com", "joe").messages_used == 1


def test_reading_dele_and_quit_work_over_quota_and_make_room(two: LiveServer) -> None:
    lmtp_send(two, ["joe@example.com"], message("one"))
    lmtp_send(two, ["joe@example.com"], message("two"))
    two.call(two.store.set_quota, "example.com", "joe", None, 2)  # full: 2 of 2
    client = pop(two)
    assert client.stat()[0] == 2
    assert client.retr(1)[0].startswith(b"+OK")
    assert client.top(2, 0)[0].startswith(b"+OK")
    assert client.dele(1).startswith(b"+OK")
    assert lmtp_send(two, ["joe@example.com"], message("three")) == [
        b"452 4.2.2 <joe@example.com> mailbox full"
    ]
    assert client.quit().startswith(b"+OK")
    # The expunge at QUIT freed one message: the next fits again, exactly to the limit.
    assert lmtp_send(two, ["joe@example.com"], message("four")) == [
        b"250 2.0.0 <joe@example.com> delivered"
    ]


def test_reject_mode_answers_552(server_factory: Callable[..., LiveServer]) -> None:
    server = server_factory(quota={"over_quota": "reject"})
    server.add_account("joe@example.com", "secret")
    server.call(server.store.set_quota, "example.com", None, 10, None)  # the domain's limit
    assert lmtp_send(server, ["joe@example.com"], message("big")) == [
        b"552 5.2.2 <joe@example.com> mailbox full"
    ]


def test_warning_alert_shown_at_next_login(two: LiveServer) -> None:
    lmtp_send(two, ["joe@example.com"], message("sizer"))
    one = two.call(two.store.get_quota, "example.com", "joe").storage_used
    # 10 such messages fill the limit; the 9th delivery crosses 90 %.
    two.call(two.store.set_quota, "example.com", "joe", 10 * one, None)
    for _ in range(7):
        lmtp_send(two, ["joe@example.com"], message("sizer"))
    assert pop(two).quit().startswith(b"+OK")  # 80 %: no alert
    lmtp_send(two, ["joe@example.com"], message("sizer"))
    lmtp_send(two, ["joe@example.com"], message("sizer"))  # 100 %: no second alert
    client = poplib.POP3(two.host, two.port(), timeout=TIMEOUT)
    client.user("joe@example.com")
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] Mailbox is 90% full: "):
        client.pass_("secret")
    client.user("joe@example.com")
    assert client.pass_("secret").startswith(b"+OK")  # shown once
    client.quit()


def test_xtnd_names_the_full_local_recipient(server_factory: Callable[..., LiveServer]) -> None:
    server = server_factory(xtnd={"relay": "127.0.0.1:9"})
    server.add_account("joe@example.com", "secret")
    server.add_account(ANN, "secret")
    server.call(server.store.set_quota, "example.com", "ann", None, 0)
    with Raw(server) as raw:
        assert raw.login().startswith(b"+OK")
        refused = xmit(raw, msg("Ann <ann@example.com>, joe@example.com"))
        assert refused == b"-ERR [SYS/TEMP] mailbox of ann@example.com is full\r\n"
        # Reading and QUIT go on in the same session.
        assert raw.cmd("STAT").startswith(b"+OK")
        assert raw.cmd("QUIT").startswith(b"+OK")


def test_sighup_rereads_quota(server_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    conf = tmp_path / "cgpop.toml"
    conf.write_text('[quota]\nover_quota = "tempfail"\n')
    server = server_factory(adjust=lambda c: dataclasses.replace(c, source=str(conf)))
    server.add_account("joe@example.com", "secret")
    server.call(server.store.set_quota, "example.com", "joe", None, 0)
    assert lmtp_send(server, ["joe@example.com"], message("a"))[0].startswith(b"452 4.2.2")
    conf.write_text('[quota]\nover_quota = "reject"\nwarn_percent = 80\n')

    async def reload() -> None:
        server.gateway.reload()

    asyncio.run_coroutine_threadsafe(reload(), server.loop).result(10)
    assert lmtp_send(server, ["joe@example.com"], message("a"))[0].startswith(b"552 5.2.2")
    assert server.gateway.deliverer.quota.warn_percent == 80
