"""Reading an LMTP DATA section in blocks, not lines (RFC 5321 section 4.5.2; RFC 2033).

aiosmtpd's reader, and ours before this, took one `readuntil(CRLF)` per line: a 4 KB message
of ~50-octet lines cost ~85 awaits and spool writes (profiled: over half of a delivery's
event-loop CPU). Here one `readuntil(".\r\n")` takes everything up to the next line that ends
in a dot, which is the terminator when that dot opens its line (CRLF "." CRLF) and plain data
otherwise; a block is unstuffed with one `replace`. Nothing past the terminator is read, so a
pipelined command after DATA stays in the stream.

The rules are those of the line reader (tests/test_lmtpdata.py checks them against it):
- the section ends only at CRLF "." CRLF, or at "." CRLF as its first line; a bare LF is data;
- a "." opening a line (after CRLF) is a stuffing dot and is removed;
- a line longer than `max_line` octets before its CRLF gets "500 Line too long", more than
  `max_size` octets in all get "552"; the first of them is the reply, owed after the data,
  and nothing more is kept once one happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

TERMINATOR = b".\r\n"
LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
TOO_MUCH_DATA = "552 Error: Too much mail data"


class DataBlocks:
    """Sans-IO: raw blocks of a DATA section in, unstuffed octets out (`feed`)."""

    def __init__(self, max_line: int, max_size: int | None) -> None:
        self.max_line, self.max_size = max_line, max_size
        self.error: str | None = None
        self.done = False
        self.size = 0  # octets of the section before its terminator, as sent (stuffed)
        self._line = 0  # octets of the current line so far (it has no CRLF yet)
        self._at_line_start = True
        self._pending = b""  # a CR that may begin the CRLF of the next block

    def feed(self, block: bytes) -> bytes:
        """A block as read: ending in "." CRLF, or any piece of an overlong stretch. Returns
        the octets to keep (b"" once an error happened); sets `done` at the terminator."""
        data = self._pending + block
        self._pending = b""
        if data.endswith(TERMINATOR):
            before = data[:-3]
            if before.endswith(b"\r\n") if before else self._at_line_start:
                self.done = True
                data = before
        elif data.endswith(b"\r"):
            self._pending, data = b"\r", data[:-1]  # never split a CRLF between blocks
        if not data:
            return b""
        if self.error is None:
            self._check(data)
        else:
            self.size += len(data)
        at_start = self._at_line_start
        self._at_line_start = data.endswith(b"\r\n")
        if self.error is not None:
            return b""
        out = data.replace(b"\r\n.", b"\r\n")
        return out[1:] if at_start and out.startswith(b".") else out

    def _check(self, data: bytes) -> None:
        """Count `data` (no error yet) and note the first limit it passes, in stream order."""
        limit, size_limit = self.max_line, self.max_size
        if not size_limit or self.size + len(data) <= size_limit:
            if self._line + len(data) <= limit:
                self.size += len(data)
                last = data.rfind(b"\r\n")
                self._line = self._line + len(data) if last < 0 else len(data) - last - 2
                return
            lines = data.split(b"\r\n")
            first = self._line + len(lines[0])
            if first <= limit and max(map(len, lines)) <= limit:
                self.size += len(data)
                self._line = first if len(lines) == 1 else len(lines[-1])
                return
        # Some limit may be passed in this block: line by line, as the line reader did (a
        # line's length is checked when it is read, the running size after it).
        lines = data.split(b"\r\n")
        for i, part in enumerate(lines):
            whole = i < len(lines) - 1  # ends with CRLF in this block
            length = self._line + len(part)
            if length > limit and self.error is None:
                self.error = LINE_TOO_LONG
            self.size += len(part) + (2 if whole else 0)
            if size_limit and self.size > size_limit and self.error is None:
                self.error = TOO_MUCH_DATA
            self._line = 0 if whole else length


async def read_data(
    reader: asyncio.StreamReader,
    blocks: DataBlocks,
    write: Callable[[bytes], None],
    discard: Callable[[], None],
) -> None:
    """Read the section from `reader` up to and including its terminator, passing the octets
    to keep to `write`, and calling `discard` (drop what was written) when a limit is passed.
    Raises ConnectionError when the stream ends first."""
    while not blocks.done:
        try:
            block = await reader.readuntil(TERMINATOR)
        except asyncio.LimitOverrunError as exc:
            # More than the reader's limit without a line ending in ".": take what was
            # scanned (never the start of a separator) and go on.
            block = await reader.read(exc.consumed)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionError("connection lost during DATA") from exc
        if not block:
            raise ConnectionError("connection lost during DATA")
        had_error = blocks.error is not None
        out = blocks.feed(block)
        if out:
            write(out)
        elif blocks.error is not None and not had_error:
            discard()  # hold nothing of a message that will be refused
