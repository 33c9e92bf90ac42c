"""Splitting the client's byte stream into bounded lines (STYLE rule 6).

Pull model: the shell `push`es what it read and `pop`s one line at a time, so the session can
change how the rest of a chunk is split (an XTND XMIT body after its command line).

Command mode: a line ends at LF (CRLF or bare LF: lenient, as most servers are). A line longer
than `limit` is not buffered: the rest is skipped up to its LF and reported once as OVERLONG,
so a client cannot make us hold more than `limit` bytes (aiosmtpd's approach).
Body mode: lines of any length pass through; past `body_limit` without an LF the buffered
part is handed on as a fragment (the body reader understands fragments), so memory stays
bounded there too.
"""

from __future__ import annotations

from typing import Final

OVERLONG: Final = None
NEED_MORE: Final = b""
# A body line may be long (RFC 5322 allows 998 octets, real mail has more); fragments past this.
BODY_FRAGMENT = 64 * 1024


class LineBuffer:
    def __init__(self, limit: int, body_limit: int = BODY_FRAGMENT) -> None:
        self.limit = limit
        self.body_limit = body_limit
        self.body_mode = False
        self._buf = bytearray()
        self._pos = 0
        self._skipping = False
        # Lines (and body fragments, and overlong lines) handed out so far: the shell's line
        # deadline (cgpop/linedeadline.py) restarts when this moves.
        self.taken = 0

    def push(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def pop(self) -> bytes | None:
        """The next line (with its ending), OVERLONG (None), or NEED_MORE (b"")."""
        buf, pos = self._buf, self._pos
        nl = buf.find(b"\n", pos)
        if nl < 0:
            avail = len(buf) - pos
            if self.body_mode and avail > self.body_limit and not self._skipping:
                self._pos = len(buf)
                self.taken += 1
                return bytes(buf[pos:])
            if not self.body_mode and avail > self.limit:
                self._skipping = True
                self._pos = len(buf)
            return NEED_MORE
        self._pos = nl + 1
        self.taken += 1
        if self._skipping:
            self._skipping = False
            return OVERLONG
        if not self.body_mode and nl + 1 - pos > self.limit:
            return OVERLONG
        return bytes(buf[pos : nl + 1])

    def feed(self, data: bytes) -> list[bytes | None]:
        """push + pop until more input is needed (convenient for tests)."""
        self.push(data)
        out: list[bytes | None] = []
        while (line := self.pop()) != NEED_MORE:
            out.append(line)
        return out

    def discard(self) -> None:
        """Forget buffered input (RFC 2595 section 4: nothing read before TLS survives it)."""
        self._buf.clear()
        self._pos = 0
        self._skipping = False

    @property
    def partial(self) -> bool:
        """True while part of a line has arrived (or an overlong one is being skipped)."""
        return self._skipping or len(self._buf) > self._pos

    @property
    def pending(self) -> int:
        return 0 if self._skipping else len(self._buf) - self._pos
