"""The block-wise LMTP DATA reader (cgpop/lmtpdata.py) against the line reader it replaced:
same octets kept, same reply, same bytes left in the stream, however the input is cut."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from cgpop.lmtpdata import LINE_TOO_LONG, TOO_MUCH_DATA, DataBlocks, read_data


async def line_reader(
    reader: asyncio.StreamReader, max_size: int | None
) -> tuple[bytes, str | None]:
    """The reader before (cgpop/lmtp.py `_read_data`, aiosmtpd's rules): one line at a time."""
    kept: list[bytes] = []
    size = 0
    error: str | None = None
    fragment = False
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as exc:
            error = error or LINE_TOO_LONG
            line = await reader.read(exc.consumed)
        if not fragment and line == b".\r\n":
            return (b"" if error else b"".join(kept)), error
        size += len(line)
        if error is None and max_size and size > max_size:
            error = TOO_MUCH_DATA
        if error is not None:
            kept.clear()
        else:
            kept.append(line[1:] if not fragment and line.startswith(b".") else line)
        fragment = not line.endswith(b"\r\n")


class Sink:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def discard(self) -> None:
        self.parts.clear()


async def run_both(
    raw: bytes, cuts: list[int], max_line: int, max_size: int | None
) -> tuple[tuple[bytes, str | None, bytes], tuple[bytes, str | None, bytes]]:
    async def feed(reader: asyncio.StreamReader) -> None:
        pos = 0
        for cut in [*sorted(cuts), len(raw)]:
            reader.feed_data(raw[pos:cut])
            pos = max(pos, cut)
            await asyncio.sleep(0)
        reader.feed_eof()

    old = asyncio.StreamReader(limit=max_line)
    new = asyncio.StreamReader(limit=max_line)
    feeding = [asyncio.ensure_future(feed(old)), asyncio.ensure_future(feed(new))]
    kept, error = await line_reader(old, max_size)
    sink, blocks = Sink(), DataBlocks(max_line, max_size)
    await read_data(new, blocks, sink.write, sink.discard)
    await asyncio.gather(*feeding)
    return (kept, error, await old.read()), (b"".join(sink.parts), blocks.error, await new.read())


def check(raw: bytes, cuts: list[int], max_line: int = 1001, max_size: int | None = None) -> None:
    old, new = asyncio.run(run_both(raw, cuts, max_line, max_size))
    assert new == old


def test_stuffing_terminator_and_what_follows() -> None:
    body = b"Subject: s\r\n\r\nbefore\n.\nmid\r\n.\nafter\r\n..dot\r\nend.\r\n.x\r\n"
    check(body + b".\r\nQUIT\r\n", [])
    check(b".\r\nNOOP\r\n", [1])  # an empty message
    check(b"..\r\n.\r\n", [2, 3])  # a line of one dot, stuffed


def test_overlong_line_and_too_much_data() -> None:
    check(b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\n.\r\nNOOP\r\n", [1000, 1001, 3000])
    check(b"a" * 50 + b"\r\n" + b"b\r\n" * 40 + b".\r\n", [7], max_size=100)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from([b".", b"\r", b"\n", b"a", b"\r\n", b".\r\n"]), max_size=40),
    st.lists(st.integers(0, 80), max_size=6),
    st.integers(2, 12),
    st.one_of(st.none(), st.integers(1, 60)),
)
def test_same_as_the_line_reader(
    parts: list[bytes], cuts: list[int], max_line: int, max_size: int | None
) -> None:
    # Every input ends with a terminator the line reader sees (after CRLF), then a command.
    check(b"".join(parts) + b"\r\n.\r\nNEXT\r\n", cuts, max_line, max_size)
