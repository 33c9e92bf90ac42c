"""A live server read with the standard library's poplib, as a mail client would."""

from __future__ import annotations

import asyncio
import poplib

import pytest

from cgpop.store.api import SEEN
from tests.conftest import LiveServer, message
from tests.e2e.helpers import USER, Raw, flags, pop, uids, wait_sessions_closed

PREFIX = b"Return-Path: <sender@remote.test>\r\nX-Real-To: <joe@example.com>\r\n"


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def joined(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


@pytest.fixture
def three(server: LiveServer) -> list[bytes]:
    msgs = [message(f"number {n}", f"Body of message {n}.\nSecond line.\n") for n in (1, 2, 3)]
    for m in msgs:
        server.deliver(USER, m)
    return msgs


def test_login_stat_list_uidl(server: LiveServer, three: list[bytes]) -> None:
    sizes = [len(PREFIX + crlf(m)) for m in three]
    client = pop(server)
    try:
        assert client.stat() == (3, sum(sizes))
        resp, listing, _ = client.list()
        assert resp.startswith(b"+OK")
        assert listing == [f"{n} {s}".encode() for n, s in enumerate(sizes, 1)]
        assert client.list(2) == f"+OK 2 {sizes[1]}".encode()
        _, uidl, _ = client.uidl()
        infos = server.call(
            server.store.list_messages,
            server.call(server.store.get_mailbox, "example.com", "joe", "INBOX"),
        )
        assert uidl == [f"{n} {m.uidl}".encode() for n, m in enumerate(infos, 1)]
        assert len(set(uidl)) == 3
        assert client.uidl(3) == f"+OK 3 {infos[2].uidl}".encode()
    finally:
        client.quit()
    # UIDLs are the same in the next session.
    again = pop(server)
    try:
        assert again.uidl()[1] == uidl
    finally:
        again.quit()


def test_retr_exact_bytes_with_prefix(server: LiveServer, three: list[bytes]) -> None:
    client = pop(server)
    try:
        resp, lines, _ = client.retr(2)
        expected = PREFIX + crlf(three[1])
        assert resp == f"+OK {len(expected)} octets".encode()
        assert joined(lines) == expected
        assert lines[0] == b"Return-Path: <sender@remote.test>"
        assert lines[1] == b"X-Real-To: <joe@example.com>"
    finally:
        client.quit()


def test_dot_lines_round_trip(server: LiveServer) -> None:
    original = (
        b".first line of the message: starts with a dot\n"
        b"Subject: dots\n\n"
        b".first body line\n"
        b"..two dots\n"
        b".\n"
        b"last line\n"
    )
    server.deliver(USER, original)
    client = pop(server)
    try:
        _, lines, _ = client.retr(1)
        assert joined(lines) == PREFIX + crlf(original)
        _, top, _ = client.top(1, 1)
        assert top[-1] == b".first body line"
    finally:
        client.quit()
    # On the wire every dot line is stuffed once, the lone "." included.
    with Raw(server) as raw:
        assert raw.login().startswith(b"+OK")
        assert raw.cmd("RETR 1").startswith(b"+OK")
        body = raw.multi()
        assert body[2] == b"..first line of the message: starts with a dot\r\n"
        assert body[5:8] == [b"..first body line\r\n", b"...two dots\r\n", b"..\r\n"]


def test_top_zero_gives_headers_and_blank_line(server: LiveServer) -> None:
    server.deliver(USER, message("top", "body one\nbody two\n"))
    client = pop(server)
    try:
        resp, lines, _ = client.top(1, 0)
        assert resp.startswith(b"+OK")
        assert lines == [
            b"Return-Path: <sender@remote.test>",
            b"X-Real-To: <joe@example.com>",
            b"From: Sender <sender@remote.test>",
            b"To: joe@example.com",
            b"Subject: top",
            b"",
        ]
        assert client.top(1, 1)[1][-1] == b"body one"
    finally:
        client.quit()


def test_top_huge_count_gives_whole_message(server: LiveServer) -> None:
    server.deliver(USER, message("all", "a\nb\nc\n"))
    client = pop(server)
    try:
        whole = client.retr(1)[1]
        assert client.top(1, 99999999)[1] == whole
    finally:
        client.quit()


def test_dele_then_quit_removes(server: LiveServer, three: list[bytes]) -> None:
    client = pop(server)
    assert client.dele(2).startswith(b"+OK")
    assert client.stat()[0] == 2
    assert client.quit().startswith(b"+OK")
    after = pop(server)
    try:
        assert after.stat()[0] == 2
        assert b"number 2" not in joined(after.retr(2)[1])
        assert b"number 3" in joined(after.retr(2)[1])
    finally:
        after.quit()
    assert uids(server) == [1, 3]


def test_dele_then_dropped_connection_removes_nothing(
    server: LiveServer, three: list[bytes]
) -> None:
    client = pop(server)
    client.dele(1)
    client.dele(3)
    client.close()  # no QUIT
    wait_sessions_closed(server)
    after = pop(server)
    try:
        assert after.stat()[0] == 3
    finally:
        after.quit()
    assert uids(server) == [1, 2, 3]


def test_rset_undeletes(server: LiveServer, three: list[bytes]) -> None:
    client = pop(server)
    client.dele(1)
    client.dele(2)
    assert client.stat()[0] == 1
    assert client.rset().startswith(b"+OK")
    assert client.stat()[0] == 3
    assert b"number 1" in joined(client.retr(1)[1])
    client.quit()
    assert uids(server) == [1, 2, 3]


def test_retr_sets_seen_top_does_not(server: LiveServer, three: list[bytes]) -> None:
    client = pop(server)
    try:
        client.top(1, 0)
        client.top(2, 5)
        client.retr(2)
        client.noop()
    finally:
        client.quit()
    wait_sessions_closed(server)
    assert flags(server, 1) == 0
    assert flags(server, 2) == SEEN
    assert flags(server, 3) == 0


def test_pipelined_retrs_all_seen_while_session_is_open(
    server: LiveServer, three: list[bytes]
) -> None:
    """The marks of a pipelined burst go to the \\Seen group commit together, as their replies
    are written: by the time the replies arrive every one is on its way to the store (stored
    once the lingering batch is written), with the session still open."""
    with Raw(server) as raw:
        assert raw.login().startswith(b"+OK")
        raw.send(b"RETR 1\r\nRETR 3\r\n")
        for _ in range(2):
            assert raw.line().startswith(b"+OK")
            raw.multi()
        assert raw.cmd("NOOP").startswith(b"+OK")
        asyncio.run_coroutine_threadsafe(server.gateway.seen.drain(), server.loop).result(30)
        assert [flags(server, uid) for uid in (1, 2, 3)] == [SEEN, 0, SEEN]


def test_message_without_final_crlf(server: LiveServer) -> None:
    server.deliver(USER, b"Subject: open end\n\nno line break at the end")
    client = pop(server)
    try:
        _, lines, _ = client.retr(1)
        assert lines[-1] == b"no line break at the end"
        assert client.list(1) == f"+OK 1 {len(joined(lines))}".encode()
    finally:
        client.quit()


def test_nul_bytes_round_trip(server: LiveServer) -> None:
    original = b"Subject: nul\n\nbefore\x00after\n\x00\n"
    server.deliver(USER, original)
    client = pop(server)
    try:
        _, lines, _ = client.retr(1)
        assert joined(lines) == PREFIX + crlf(original)
    finally:
        client.quit()


@pytest.mark.parametrize("user", ["nobody@example.com", "joe@nowhere.test", "nobody"])
def test_unknown_account_and_wrong_password_look_alike(server: LiveServer, user: str) -> None:
    def failed_login(name: str, password: str) -> str:
        client = poplib.POP3(server.host, server.port("pop3"), timeout=5)
        try:
            client.user(name)
            with pytest.raises(poplib.error_proto) as info:
                client.pass_(password)
            return str(info.value)
        finally:
            client.close()

    wrong_password = failed_login(USER, "not-the-secret")
    unknown = failed_login(user, "secret")
    assert wrong_password.startswith("b'-ERR [AUTH]")
    assert unknown == wrong_password


def test_quit_in_authorization(server: LiveServer, three: list[bytes]) -> None:
    with Raw(server) as raw:
        assert raw.cmd("USER joe@example.com").startswith(b"+OK")
        assert raw.cmd("QUIT").startswith(b"+OK")
        assert raw.at_eof()
    assert uids(server) == [1, 2, 3]
    client = poplib.POP3(server.host, server.port("pop3"), timeout=5)
    assert client.quit().startswith(b"+OK")
