"""Malformed and unusual input on a raw socket: what no client library would send."""

from __future__ import annotations

import pytest

from tests.conftest import LiveServer, message
from tests.e2e.helpers import USER, Raw, uids


@pytest.fixture
def raw(server: LiveServer) -> Raw:
    for n in (1, 2):
        server.deliver(USER, message(f"number {n}", f"body {n}\n"))
    conn = Raw(server)
    assert conn.greeting.startswith(b"+OK")
    assert conn.login().startswith(b"+OK")
    yield conn
    conn.close()


@pytest.mark.parametrize(
    "arg", ["0", "-1", "+1", "1x", "3", "999999999", "1000000000", " 1", "", "0x1", "1.0"]
)
def test_bad_message_numbers(raw: Raw, arg: str) -> None:
    for verb in ("RETR", "DELE", "LIST", "UIDL", "TOP"):
        line = f"{verb} {arg} 0" if verb == "TOP" else f"{verb} {arg}"
        if verb in ("LIST", "UIDL") and arg == "":
            continue  # the bare form is the full listing
        assert raw.cmd(line).startswith(b"-ERR"), line
    # Nothing was deleted along the way and the session goes on.
    assert raw.cmd("STAT").startswith(b"+OK 2 ")


def test_trailing_noise(raw: Raw) -> None:
    for line in (
        "RETR 1 2",
        "DELE 1 x",
        "STAT now",
        "LIST 1 1",
        "TOP 1 0 0",
        "NOOP please",
        "RSET 1",
    ):
        assert raw.cmd(line).startswith(b"-ERR"), line
    assert raw.cmd("STAT").startswith(b"+OK 2 ")


def test_dele_twice_and_deleted_message_is_gone(raw: Raw) -> None:
    assert raw.cmd("DELE 1").startswith(b"+OK")
    assert raw.cmd("DELE 1").startswith(b"-ERR")
    for line in ("RETR 1", "TOP 1 0", "LIST 1", "UIDL 1", "DELE 1"):
        assert raw.cmd(line).startswith(b"-ERR"), line
    assert raw.cmd("LIST").startswith(b"+OK")
    assert raw.multi() == [raw_list_line(raw, 2)]
    assert raw.cmd("UIDL").startswith(b"+OK")
    assert [line.split()[0] for line in raw.multi()] == [b"2"]
    assert raw.cmd("STAT").startswith(b"+OK 1 ")


def raw_list_line(raw: Raw, n: int) -> bytes:
    reply = raw.cmd(f"LIST {n}")
    assert reply.startswith(b"+OK ")
    return reply[4:]


def test_case_insensitive_verbs(raw: Raw) -> None:
    assert raw.cmd("stat").startswith(b"+OK 2 ")
    assert raw.cmd("Retr 1").startswith(b"+OK")
    assert b"Subject: number 1\r\n" in raw.multi()
    assert raw.cmd("noOp").startswith(b"+OK")
    assert raw.cmd("quit").startswith(b"+OK")
    assert raw.at_eof()


def test_case_insensitive_login(server: LiveServer) -> None:
    with Raw(server) as raw:
        assert raw.cmd("user joe@example.com").startswith(b"+OK")
        assert raw.cmd("pass secret").startswith(b"+OK")


def test_last_is_a_clean_error(raw: Raw) -> None:
    assert raw.cmd("LAST").startswith(b"-ERR")
    assert raw.cmd("STAT").startswith(b"+OK")


def test_nul_in_command(raw: Raw) -> None:
    assert raw.cmd(b"STAT\x00").startswith(b"-ERR")
    assert raw.cmd(b"RETR \x001").startswith(b"-ERR")
    assert raw.cmd("STAT").startswith(b"+OK 2 ")


def test_overlong_line_gets_one_error(raw: Raw) -> None:
    raw.send(b"NOOP " + b"x" * 5000 + b"\r\nSTAT\r\n")
    assert raw.line().startswith(b"-ERR")
    # The next reply is STAT's: exactly one -ERR for the long line, and the session goes on.
    assert raw.line().startswith(b"+OK 2 ")
    assert raw.cmd("NOOP").startswith(b"+OK")


def test_overlong_line_in_pieces(raw: Raw) -> None:
    for _ in range(5):
        raw.send(b"y" * 1000)
    raw.send(b"\r\n")
    assert raw.line().startswith(b"-ERR")
    assert raw.cmd("STAT").startswith(b"+OK 2 ")


def test_too_many_bad_commands_closes(server: LiveServer) -> None:
    limit = server.config.pop3.max_bad_commands
    with Raw(server) as raw:
        raw.login()
        for _ in range(limit - 1):
            assert raw.cmd("BOGUS").startswith(b"-ERR")
        assert raw.cmd("BOGUS").startswith(b"-ERR")
        rest = raw.file.read()  # the closing -ERR, then end of file
        assert rest.startswith(b"-ERR") and rest.endswith(b"\r\n")
        assert rest.count(b"\r\n") == 1


def test_too_many_failed_logins_closes(server: LiveServer) -> None:
    limit = server.config.pop3.max_auth_failures
    with Raw(server) as raw:
        for _ in range(limit - 1):
            assert raw.cmd("USER joe@example.com").startswith(b"+OK")
            assert raw.cmd("PASS wrong").startswith(b"-ERR [AUTH]")
        assert raw.cmd("USER joe@example.com").startswith(b"+OK")
        assert raw.cmd("PASS wrong").startswith(b"-ERR")
        assert raw.at_eof()


def test_pipelining_keeps_order(raw: Raw) -> None:
    assert b"PIPELINING" in b"".join(capa(raw))
    raw.send(
        b"STAT\r\nLIST 1\r\nUIDL 2\r\nBOGUS\r\nRETR 2\r\nTOP 1 0\r\nDELE 1\r\nRETR 1\r\n"
        b"RSET\r\nNOOP\r\nLIST\r\nQUIT\r\n"
    )
    assert raw.line().startswith(b"+OK 2 ")
    assert raw.line().startswith(b"+OK 1 ")
    assert raw.line().startswith(b"+OK 2 ")
    assert raw.line().startswith(b"-ERR")
    assert raw.line().startswith(b"+OK")
    assert b"Subject: number 2\r\n" in raw.multi()
    assert raw.line().startswith(b"+OK")
    assert raw.multi()[-1] == b"\r\n"
    assert raw.line().startswith(b"+OK")  # DELE 1
    assert raw.line().startswith(b"-ERR")  # RETR 1: deleted
    assert raw.line().startswith(b"+OK")  # RSET
    assert raw.line().startswith(b"+OK")  # NOOP
    assert raw.line().startswith(b"+OK")  # LIST
    assert len(raw.multi()) == 2
    assert raw.line().startswith(b"+OK")  # QUIT
    assert raw.at_eof()


def test_pipelined_burst_of_many_commands(server: LiveServer, raw: Raw) -> None:
    raw.send(b"".join(f"LIST {1 + n % 2}\r\n".encode() for n in range(500)) + b"QUIT\r\n")
    replies = [raw.line() for _ in range(501)]
    assert all(r.startswith(f"+OK {1 + n % 2} ".encode()) for n, r in enumerate(replies[:500]))
    assert replies[500].startswith(b"+OK")
    assert raw.at_eof()
    assert uids(server) == [1, 2]


def capa(raw: Raw) -> list[bytes]:
    assert raw.cmd("CAPA").startswith(b"+OK")
    return raw.multi()
