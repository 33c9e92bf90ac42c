"""A restart on the same data directory keeps accounts, messages, flags and UIDLs."""

from __future__ import annotations

import gc
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from cgpop.store.api import SEEN
from cgpop.store.sqlite import INLINE_MAX
from tests.conftest import LiveServer, message, start_server
from tests.e2e.helpers import USER, Raw, flags, pop


def test_restart_keeps_messages_flags_and_uidls(
    tmp_path: Path, server_factory: Callable[..., LiveServer]
) -> None:
    data_dir = tmp_path / "restart-data"
    first = server_factory(data_dir=data_dir)
    first.add_account(USER, "secret")
    first.deliver(USER, message("one", "first\n"))
    first.deliver(USER, message("two", ".dotted\n" + "y" * 200 + "\n"))
    first.deliver(USER, message("big", ("z" * 99 + "\n") * (INLINE_MAX // 50)))
    client = pop(first)
    before_uidl = client.uidl()[1]
    before_list = client.list()[1]
    before = [client.top(n, 99999999)[1] for n in (1, 2, 3)]  # TOP: no \Seen
    client.dele(1)
    client.quit()
    client = pop(first)
    client.retr(1)  # message "two": sets \Seen
    client.quit()
    assert flags(first, 2) == SEEN
    first.stop()

    second = server_factory(data_dir=data_dir)
    # Nothing re-added: the account and its password come from the data directory.
    client = pop(second)
    try:
        assert client.uidl()[1] == [
            b"1 " + before_uidl[1].split()[1],
            b"2 " + before_uidl[2].split()[1],
        ]
        assert client.list()[1] == [
            b"1 " + before_list[1].split()[1],
            b"2 " + before_list[2].split()[1],
        ]
        assert client.top(1, 0)[1][-2] == b"Subject: two"
        assert client.top(2, 0)[1][-2] == b"Subject: big"
    finally:
        client.quit()
    assert flags(second, 1) is None  # expunged before the restart
    assert flags(second, 2) == SEEN
    assert flags(second, 3) == 0
    client = pop(second)
    try:
        assert client.retr(1)[1] == before[1]
        assert client.retr(2)[1] == before[2]
    finally:
        client.quit()
    # New mail after the restart gets a fresh UID, never a reused one.
    second.deliver(USER, message("four"))
    client = pop(second)
    try:
        uidls = [line.split()[1] for line in client.uidl()[1]]
    finally:
        client.quit()
    assert len(uidls) == 3
    assert uidls[2] not in [line.split()[1] for line in before_uidl]
    assert uidls[2].endswith(b".4")


def test_stop_with_idle_pop3_session_logs_no_error(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with Raw(server) as raw, caplog.at_level(logging.INFO):
        assert raw.login().startswith(b"+OK")
        server.stop()
        # The client is told, then sees the connection end.
        assert raw.file.read() == b"-ERR [SYS/TEMP] server shutting down\r\n"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def test_stop_ends_open_lmtp_sessions(tmp_path: Path) -> None:
    srv: LiveServer | None = start_server(tmp_path / "data")
    assert srv is not None
    try:
        with (
            socket.create_connection((srv.host, srv.port("lmtp")), 2) as sock,
            sock.makefile("rb") as f,
        ):
            assert f.readline().startswith(b"220 ")
            sock.sendall(b"LHLO client.test\r\n")
            while f.readline().startswith(b"250-"):
                pass
            srv.stop()
            rest = f.read()  # times out (2 s) when the server never ends the session
            assert rest.startswith(b"421 ")
    finally:
        srv.stop()
        srv = None
        gc.collect()  # any leaked transport's ResourceWarning surfaces in this test
