"""The bound on how long one command line may take to arrive (issue 10, slowloris).

The idle timer (RFC 1939 section 3, at least 10 minutes) is about the pause *between*
commands; it is reset by every byte, so a client sending one byte every 30 s and never an end
of line held its connection, and a slot of `max_per_ip`/`max_channels`, for ever. Here the
clock starts with the first byte of a line and stops when the line ends: a line (and, in an
XTND XMIT body, each line or 64 KiB fragment) that has begun must end within `line_timeout`
seconds, or the connection is closed without a reply, as autologout does.

The default of 60 s is generous: a command line is at most `max_line` (1024) octets, which
any real client sends in one segment; even a body line of 64 KiB needs only ~1 KiB/s. No RFC
sets this bound; RFC 1939's 10 minutes is the idle time between commands, not the time a
half-sent line may take. (Apache's mod_reqtimeout bounds a request header the same way.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cgpop.pop3.lines import LineBuffer


class LineTimeout(TimeoutError):
    """A started line did not end in time: the connection is closed."""


class LineDeadline:
    """When the line being received must be complete; None while no line has begun."""

    def __init__(self, bound: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.bound = bound
        self._clock = clock
        self._due: float | None = None
        self._taken = 0

    def after_input(self, lines: LineBuffer) -> None:
        """Call once the buffered lines have been handled. The clock starts for a line that
        began in this input and keeps running for one still unfinished from earlier input."""
        if not lines.partial:
            self._due = None
        elif self._due is None or lines.taken != self._taken:
            self._due = self._clock() + self.bound
        self._taken = lines.taken

    def remaining(self) -> float | None:
        """Seconds left for the current line; None when no line has begun."""
        if self._due is None:
            return None
        return max(0.0, self._due - self._clock())

    async def read(self, reader: asyncio.StreamReader, size: int) -> bytes:
        """`reader.read(size)`, but no longer than the current line's deadline allows.
        Raises LineTimeout when it passes."""
        left = self.remaining()
        if left is None:
            return await reader.read(size)
        try:
            return await asyncio.wait_for(reader.read(size), left)
        except TimeoutError:
            raise LineTimeout(f"command line not completed within {self.bound:g} s") from None
