"""BodyReader: terminator, unstuffing, line-end repair, overflow, smuggling, byte-at-a-time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cgpop.pop3.body import Body, BodyReader

AFTER = b"QUIT\r\n"  # what the client sends once the body is over


def lines_of(stream: bytes, cap: int | None = None) -> Iterator[bytes]:
    """Split a byte stream as the engine does, fed one byte at a time.

    A chunk ends after each b"\\n"; with `cap`, an engine with a bounded line buffer also passes
    on `cap` octets at a time (fragments of a longer line).
    """
    buf = bytearray()
    for i in range(len(stream)):
        buf += stream[i : i + 1]
        if buf.endswith(b"\n") or (cap is not None and len(buf) >= cap):
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def read(stream: bytes, max_size: int = 1 << 20, cap: int | None = None) -> tuple[Body, bytes]:
    """Feed `stream`; return the body and the bytes left for the command parser."""
    reader = BodyReader(max_size)
    chunks = list(lines_of(stream, cap))
    for n, chunk in enumerate(chunks):
        if reader.feed_line(chunk):
            return reader.result(), b"".join(chunks[n + 1 :])
    raise AssertionError("terminator never recognised")


def test_simple_body() -> None:
    body, rest = read(b"Subject: x\r\n\r\nhello\r\n.\r\n" + AFTER)
    assert body == Body(b"Subject: x\r\n\r\nhello\r\n", overflow=False, size=21)
    assert rest == AFTER


def test_empty_body() -> None:
    body, rest = read(b".\r\n" + AFTER)
    assert body.message == b"" and rest == AFTER


@pytest.mark.parametrize(
    ("line", "stored"),
    [
        (b"..\r\n", b".\r\n"),
        (b"...\r\n", b"..\r\n"),
        (b"..foo\r\n", b".foo\r\n"),
        (b". \r\n", b" \r\n"),
        (b".foo\r\n", b"foo\r\n"),  # an unstuffed dot line from a lax client loses its dot
        (b"a.b\r\n", b"a.b\r\n"),
    ],
)
def test_dot_unstuffing(line: bytes, stored: bytes) -> None:
    body, _ = read(b"x\r\n" + line + b".\r\n")
    assert body.message == b"x\r\n" + stored
    first, _ = read(line + b".\r\n")  # the first line is unstuffed too
    assert first.message == stored


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"a\nb\r\n.\r\n", b"a\r\nb\r\n"),  # bare LF line end becomes CRLF
        (b"a\rb\r\n.\r\n", b"a\r\nb\r\n"),  # bare CR inside a line becomes CRLF
        (b"a\r\r\n.\r\n", b"a\r\n\r\n"),
        (b"a\n\n\r\n.\r\n", b"a\r\n\r\n\r\n"),
        (b"\r\n.\r\n", b"\r\n"),
    ],
)
def test_line_end_repair(stream: bytes, message: bytes) -> None:
    assert read(stream)[0].message == message


# Each shape is something some server once took for the end of DATA (SEC Consult's SMTP
# smuggling research, December 2023; aiosmtpd test_smtpsmuggling uses "\n.\r\n"). Here the body
# must go on until the real CRLF "." CRLF, and the smuggled text must stay inside the message.
SMUGGLING = [
    b"\n.\r\n",
    b"\n.\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\n.\r",
    b"\r\n.\r\r\n",
    b"\r\n. \r\n",
    b"\r\n.\x00\r\n",
]


@pytest.mark.parametrize("shape", SMUGGLING, ids=repr)
@pytest.mark.parametrize("cap", [None, 3, 4, 7])
def test_smuggling_shapes_do_not_end_the_body(shape: bytes, cap: int | None) -> None:
    injected = b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    stream = b"Subject: x\r\n\r\nTesting" + shape + injected + b"tail\r\n.\r\n" + AFTER
    body, rest = read(stream, cap=cap)
    assert rest == AFTER
    assert injected in body.message
    assert body.message.endswith(b"tail\r\n")
    # Only CRLF line ends reach the rest of the system.
    assert b"\r" not in body.message.replace(b"\r\n", b"")
    assert b"\n" not in body.message.replace(b"\r\n", b"")


def test_aiosmtpd_smuggling_case_exactly() -> None:
    stream = (
        b"From: Anne Person <anne@example.com>\r\n"
        b"To: Bart Person <bart@example.com>\r\n"
        b"Subject: A test\r\n"
        b"Message-ID: <ant>\r\n"
        b"\r\n"
        b"Testing\n.\r\nNO SMUGGLING\n\r\n.\r\n"
    )
    body, rest = read(stream)
    assert rest == b""
    assert body.message.endswith(b"Testing\r\n.\r\nNO SMUGGLING\r\n\r\n")


def test_dot_after_bare_lf_is_not_unstuffed() -> None:
    # A "." after a bare LF is mid-line (RFC 5321 section 2.3.8); it is kept as written.
    body, _ = read(b"a\n..b\r\n.\r\n")
    assert body.message == b"a\r\n..b\r\n"


def test_dot_lf_at_line_start_is_data() -> None:
    body, rest = read(b"a\r\n.\nb\r\n.\r\n" + AFTER)
    assert body.message == b"a\r\n\r\nb\r\n"  # the leading dot is unstuffed, the LF repaired
    assert rest == AFTER


# cap >= 3: an engine never cuts the three-octet terminator line (see cgpop.pop3.body).
@pytest.mark.parametrize("cap", [None, 3, 4, 5, 64])
def test_byte_at_a_time_matches_whole_lines(cap: int | None) -> None:
    stream = b"H: v\r\n\r\n..x\r\n.\n\r\nmid\rdle\r\n\n.\r\n..\r\nend\r\n.\r\n" + AFTER
    whole, rest_whole = read(stream)
    pieces, rest_pieces = read(stream, cap=cap)
    assert pieces == whole and rest_pieces == rest_whole == AFTER


def test_fragment_ending_in_cr_pairs_with_next_lf() -> None:
    reader = BodyReader(100)
    for chunk in (b"abc\r", b"\n", b"de\r", b"f\r\n", b".\r\n"):
        done = reader.feed_line(chunk)
    assert done
    assert reader.result().message == b"abc\r\nde\r\nf\r\n"


def test_overflow_keeps_reading_to_the_terminator() -> None:
    stream = b"".join(b"line %03d\r\n" % i for i in range(100)) + b".\r\n" + AFTER
    body, rest = read(stream, max_size=50)
    assert body.overflow and body.message == b""
    assert body.size == 1000
    assert rest == AFTER  # the session is still in step


def test_size_exactly_at_limit_is_accepted() -> None:
    body, _ = read(b"12345678\r\n.\r\n", max_size=10)
    assert not body.overflow and body.message == b"12345678\r\n"
    body, _ = read(b"123456789\r\n.\r\n", max_size=10)
    assert body.overflow


def test_misuse_is_reported() -> None:
    reader = BodyReader(10)
    with pytest.raises(RuntimeError):
        reader.result()
    assert reader.feed_line(b".\r\n")
    assert reader.done
    with pytest.raises(RuntimeError):
        reader.feed_line(b"x\r\n")
    with pytest.raises(ValueError):
        BodyReader(-1)
