"""The bench's raw RETR reader: framing and octet count only, in any split of the bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import ceiling, rawpop
from bench.rawpop import RawCheckFailed, RawReply, stuffed

MESSAGE = b"Subject: x\r\n\r\n.leading dot\r\nplain\r\n..two\r\n.\r\nend\r\n"
STUFFED = stuffed(MESSAGE)
REPLY = b"+OK 52 octets\r\n" + STUFFED + b".\r\n"


def feed_all(reply: RawReply, data: bytes, step: int) -> bool:
    done = False
    for i in range(0, len(data), step):
        assert not done, "complete before the last octet"
        done = reply.feed(memoryview(data)[i : i + step])
    return done


def test_stuffed_doubles_every_leading_dot() -> None:
    assert STUFFED == (b"Subject: x\r\n\r\n..leading dot\r\nplain\r\n...two\r\n..\r\nend\r\n")
    assert stuffed(b".a\r\n") == b"..a\r\n"


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7, len(REPLY)])
def test_complete_reply_in_any_split(step: int) -> None:
    reply = RawReply(len(STUFFED))
    assert feed_all(reply, REPLY, step)
    reply.check()
    assert reply.status == b"+OK 52 octets\r\n"
    assert reply.body == len(STUFFED) + 3


def test_empty_body_terminator_follows_status_line() -> None:
    reply = RawReply(0)
    assert feed_all(reply, b"+OK 0 octets\r\n.\r\n", 1)
    reply.check()


def test_short_reply_stops_at_its_terminator_and_fails_the_count() -> None:
    reply = RawReply(len(STUFFED) + 10)
    assert feed_all(reply, REPLY, 1)
    with pytest.raises(RawCheckFailed, match="expected"):
        reply.check()


def test_octets_past_the_expected_end_fail_at_once() -> None:
    reply = RawReply(len(STUFFED) - 4)
    with pytest.raises(RawCheckFailed, match="more than"):
        feed_all(reply, REPLY, len(REPLY))


def test_right_count_without_terminator_fails() -> None:
    body = STUFFED[:-2] + b"xx"  # same length, last line not ended by CRLF
    reply = RawReply(len(STUFFED))
    assert feed_all(reply, b"+OK\r\n" + body + b".\r\n", 1)
    with pytest.raises(RawCheckFailed, match=r"CRLF\.CRLF"):
        reply.check()


def test_err_status_fails() -> None:
    reply = RawReply(10)
    with pytest.raises(RawCheckFailed, match="no such message"):
        feed_all(reply, b"-ERR no such message\r\n", 1)


def test_overlong_status_line_fails() -> None:
    reply = RawReply(10)
    with pytest.raises(RawCheckFailed, match="512"):
        feed_all(reply, b"+OK " + b"x" * 600, 1)


def test_ceiling_server_sends_the_stuffed_octets(tmp_path: Path) -> None:
    proc, port = ceiling.start(tmp_path, STUFFED + b".\r\n")
    try:
        res = rawpop.raw_retr(port, "u", "p", len(STUFFED))
        assert res.octets == len(STUFFED) + 3
        assert res.session_reused is None
        with pytest.raises(RawCheckFailed, match="more than"):
            rawpop.raw_retr(port, "u", "p", len(STUFFED) - 1)
    finally:
        proc.terminate()
        proc.wait()
