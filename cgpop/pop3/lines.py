"""Splitting the client's byte stream into bounded command lines (STYLE rule 6).

A line ends at LF (CRLF or bare LF: lenient, as most servers are). A line longer than the
limit is not buffered: the rest is skipped up to its LF and reported once as OVERLONG, so a
hostile client cannot make us hold more than `limit` bytes (aiosmtpd's approach).
"""

from __future__ import annotations

from typing import Final

OVERLONG: Final = None


class LineBuffer:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes | None]:
        """Return the complete lines in `data` (with their ending), None for each overlong one."""
        out: list[bytes | None] = []
        start = 0
        n = len(data)
        while start < n:
            nl = data.find(b"\n", start)
            if nl < 0:
                if not self._skipping:
                    self._buf += data[start:]
                    if len(self._buf) > self.limit:
                        self._buf.clear()
                        self._skipping = True
                break
            if self._skipping:
                self._skipping = False
                out.append(OVERLONG)
            elif len(self._buf) + nl + 1 - start > self.limit:
                self._buf.clear()
                out.append(OVERLONG)
            elif self._buf:
                self._buf += data[start : nl + 1]
                out.append(bytes(self._buf))
                self._buf.clear()
            else:
                out.append(data[start : nl + 1])
            start = nl + 1
        return out

    def discard(self) -> None:
        """Forget buffered input (RFC 2595 section 4: nothing read before TLS survives it)."""
        self._buf.clear()
        self._skipping = False

    @property
    def pending(self) -> int:
        return len(self._buf)
