"""Dot-stuffing and TOP on stored octets."""

from __future__ import annotations

import pytest

from cgpop.wire import dot_stuff, normalize_crlf, top_lines


def test_normalize_line_endings_and_final_crlf() -> None:
    assert normalize_crlf(b"a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd\r\n"
    assert normalize_crlf(b"x\r\n") == b"x\r\n"


def test_dot_stuffing_every_line_including_first() -> None:
    assert dot_stuff(b".first\r\nmid\r\n..two\r\n.\r\nend.\r\n") == (
        b"..first\r\nmid\r\n...two\r\n..\r\nend.\r\n"
    )


MSG = b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\nl3\r\n"


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, b"A: 1\r\nB: 2\r\n\r\n"),
        (1, b"A: 1\r\nB: 2\r\n\r\nl1\r\n"),
        (2, b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n"),
        (99999999, MSG),
    ],
)
@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_top(n: int, expected: bytes, chunk: int) -> None:
    chunks = [MSG[i : i + chunk] for i in range(0, len(MSG), chunk)]
    assert b"".join(top_lines(chunks, n)) == expected


def test_top_of_message_without_body_separator() -> None:
    assert b"".join(top_lines([b"A: 1\r\nB: 2\r\n"], 0)) == b"A: 1\r\nB: 2\r\n"
