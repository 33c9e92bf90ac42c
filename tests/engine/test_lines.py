"""The command-line splitter, fed whole and byte at a time."""

from __future__ import annotations

import pytest

from cgpop.pop3.lines import OVERLONG, LineBuffer


def feed_bytewise(buf: LineBuffer, data: bytes) -> list[bytes | None]:
    out: list[bytes | None] = []
    for i in range(len(data)):
        out += buf.feed(data[i : i + 1])
    return out


STREAM = b"USER joe\r\nPASS a b\r\nSTAT\nNOOP\r\n"
EXPECTED = [b"USER joe\r\n", b"PASS a b\r\n", b"STAT\n", b"NOOP\r\n"]


@pytest.mark.parametrize("bytewise", [False, True])
def test_lines(bytewise: bool) -> None:
    buf = LineBuffer(255)
    got = feed_bytewise(buf, STREAM) if bytewise else buf.feed(STREAM)
    assert got == EXPECTED
    assert buf.pending == 0


@pytest.mark.parametrize("bytewise", [False, True])
def test_overlong_line_reported_once_and_bounded(bytewise: bool) -> None:
    buf = LineBuffer(255)
    data = b"NOOP\r\n" + b"X" * 5000 + b"\r\nSTAT\r\n"
    got = feed_bytewise(buf, data) if bytewise else buf.feed(data)
    assert got == [b"NOOP\r\n", OVERLONG, b"STAT\r\n"]
    assert buf.pending == 0


def test_line_of_exactly_the_limit_is_accepted() -> None:
    buf = LineBuffer(10)
    assert buf.feed(b"12345678\r\n") == [b"12345678\r\n"]
    assert buf.feed(b"123456789\r\n") == [OVERLONG]


def test_partial_line_is_kept_then_completed() -> None:
    buf = LineBuffer(255)
    assert buf.feed(b"US") == []
    assert buf.feed(b"ER x\r\nST") == [b"USER x\r\n"]
    assert buf.feed(b"AT\r\n") == [b"STAT\r\n"]


def test_discard_forgets_buffered_input() -> None:
    buf = LineBuffer(255)
    buf.feed(b"USER inj")
    buf.discard()
    assert buf.feed(b"ected\r\n") == [b"ected\r\n"]
