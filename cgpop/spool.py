"""Message octets on their way in, kept in memory only up to a threshold (issue 10, defect 6).

Ten XTND XMIT sessions of 25 MB each took the server from 46 MB to 925 MB, and one 50 MB LMTP
message peaked at 243 MB: every stage held the whole message, often twice. Now an incoming
message goes into a `Spool`: memory up to `SPOOL_THRESHOLD`, then an unnamed temporary file in
the data directory (`tempfile.SpooledTemporaryFile`: the file has no name, so nothing is left
behind by a crash). Past the threshold a message travels as a `SpooledMessage` (new header
octets in memory, the rest in the spool) and every later stage reads it in chunks: the From
check and envelope read the header only, delivery streams it into the body file
(`StreamStuffer`), the relay queue into its BLOB. Server memory is then bounded by the number
of messages in flight times the threshold, not times their size.

`Octets` (bytes or a SpooledMessage) is what delivery accepts; a backend that cannot stream
calls `to_bytes`.
"""

from __future__ import annotations

import re
import tempfile
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# In memory up to 1 MiB per message: small mail (nearly all of it) never touches the disk; a
# thousand large messages at once hold at most ~1 GiB before spilling, and usually far less.
SPOOL_THRESHOLD = 1024 * 1024
# Chunks read back from a spool: the bound on what one reader holds at a time.
CHUNK = 256 * 1024
# A header block bigger than this is not read into memory (Postfix's header_size_limit is
# 100 KiB; real headers are a few KiB). Such a message is refused by XTND XMIT, and LMTP
# delivery looks for Message-ID only this far.
HEADER_MAX = 1024 * 1024


class Spool:
    """A write-once buffer of message octets, then read back in chunks (thread-safe reads)."""

    def __init__(self, directory: Path | None, threshold: int = SPOOL_THRESHOLD) -> None:
        self._file = tempfile.SpooledTemporaryFile(  # noqa: SIM115 (closed by close())
            max_size=threshold, dir=None if directory is None else str(directory)
        )
        self.size = 0
        self._lock = threading.Lock()
        # A spool dropped unclosed (a client gone mid-message) still frees its file at once.
        self._closer = weakref.finalize(self, self._file.close)

    @property
    def on_disk(self) -> bool:
        return bool(getattr(self._file, "_rolled", False))

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    def discard(self) -> None:
        """Forget what was written (an oversized message: keep counting, hold nothing)."""
        self._file.seek(0)
        self._file.truncate()

    def read(self, start: int, length: int) -> bytes:
        with self._lock:
            self._file.seek(start)
            return self._file.read(length)

    def getvalue(self) -> bytes:
        return self.read(0, self.size)

    def close(self) -> None:
        self._closer()


@dataclass(frozen=True, slots=True, eq=False)
class SpooledMessage:
    """A message: `head` (in memory), then the spool's octets from `offset` on."""

    head: bytes
    spool: Spool
    offset: int = 0

    @property
    def size(self) -> int:
        return len(self.head) + self.spool.size - self.offset

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        if self.head:
            yield self.head
        pos = self.offset
        while pos < self.spool.size:
            data = self.spool.read(pos, size)
            if not data:
                break
            pos += len(data)
            yield data

    def start(self, limit: int) -> bytes:
        """The first `limit` octets (or all, when fewer)."""
        out = self.head[:limit]
        if len(out) < limit:
            out += self.spool.read(self.offset, limit - len(out))
        return out

    def close(self) -> None:
        self.spool.close()


Octets = bytes | SpooledMessage


def size_of(message: Octets) -> int:
    return len(message) if isinstance(message, bytes) else message.size


def to_bytes(message: Octets) -> bytes:
    """The whole message in memory: for small messages and backends that cannot stream."""
    return message if isinstance(message, bytes) else b"".join(message.chunks())


def head_of(message: Octets, limit: int = HEADER_MAX) -> bytes:
    """The start of a message, enough for its header block (for Message-ID and the like)."""
    return message[:limit] if isinstance(message, bytes) else message.start(limit)


def close(message: Octets) -> None:
    if isinstance(message, SpooledMessage):
        message.close()


def split_head(message: Octets) -> tuple[bytes | None, SpooledMessage | None]:
    """For a spooled message: its header block with the empty line after it, and the rest as
    a SpooledMessage; (None, None) when the header block is longer than HEADER_MAX. A message
    in memory is returned whole, with no rest."""
    if isinstance(message, bytes):
        return message, None
    start = message.start(HEADER_MAX)
    if start.startswith(b"\r\n"):
        cut = 2
    else:
        end = start.find(b"\r\n\r\n")
        if end < 0:
            return None, None
        cut = end + 4
    if cut <= len(message.head):  # pragma: no cover - a fresh spool has no head
        return start[:cut], SpooledMessage(message.head[cut:], message.spool, message.offset)
    return start[:cut], SpooledMessage(b"", message.spool, message.offset + cut - len(message.head))


def join(head: Octets, rest: SpooledMessage | None) -> Octets:
    """`head` followed by `rest` (from `split_head`), still spooled."""
    if rest is None:
        return head
    assert isinstance(head, bytes)
    return SpooledMessage(head + rest.head, rest.spool, rest.offset)


_LINE_END = re.compile(rb"\r\n|\r(?!\n)|\n")
_DOT_AFTER_LF = re.compile(rb"(?<=\n)\.")
# A run this long without LF is handed on (minus a trailing CR, which may pair with an LF).
_CARRY_MAX = 64 * 1024


class StreamStuffer:
    """`wire.dot_stuff(wire.normalize_crlf(message))` over chunks, with bounded memory: feed
    chunks, then `finish`; the outputs joined are the same octets. `size` is then the
    normalised size (what POP3 reports, RFC 1939 section 11)."""

    def __init__(self) -> None:
        self.size = 0
        self._carry = b""
        self._line_start = True
        self._ends_crlf = False

    def feed(self, chunk: bytes) -> bytes:
        buf = self._carry + chunk if self._carry else chunk
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            if len(buf) <= _CARRY_MAX:
                self._carry = buf
                return b""
            cut = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        self._carry = buf[cut:]
        return self._emit(buf[:cut])

    def finish(self) -> bytes:
        out = self._emit(self._carry) if self._carry else b""
        self._carry = b""
        if not self._ends_crlf:
            self.size += 2
            out += b"\r\n"
            self._ends_crlf = True
        return out

    def _emit(self, segment: bytes) -> bytes:
        normalized = _LINE_END.sub(b"\r\n", segment)
        if not normalized:
            return b""
        self.size += len(normalized)
        stuffed = _DOT_AFTER_LF.sub(b"..", normalized)
        if self._line_start and normalized.startswith(b"."):
            stuffed = b"." + stuffed
        self._line_start = normalized.endswith(b"\n")
        self._ends_crlf = normalized.endswith(b"\r\n")
        return stuffed
