"""Sans-IO reader for an XTND XMIT body: terminator, dot-unstuffing, line-end repair, size bound.

The engine splits its input into chunks that end in b"\\n" (a line, whatever precedes the LF) and
feeds them here one by one, after it answered `+OK Start sending message.`. The reader never sees
a socket; it says when the body is complete and then hands back the message.

The model follows RFC 5321 section 2.3.8 and section 4.5.2, as aiosmtpd's `smtp_DATA` does since
its SMTP-smuggling fix: a *logical line* ends only at CRLF. A bare LF (or a bare CR) is a character
inside a logical line, not a line end. Consequences, each one deliberate:

* The body ends only on a logical line that is exactly b".\\r\\n", i.e. the byte sequence
  CRLF "." CRLF counting the CRLF that ended the previous line (the XTND XMIT command line counts
  as that first CRLF, so an empty body is b".\\r\\n" straight away). So b".\\n", b".\\r" + anything,
  b"\\n.\\r\\n", b"\\r.\\r\\n", b"\\n.\\n" and b".\\r\\n" right after a bare-LF line all stay data.
  Those are the SMTP-smuggling shapes (SEC Consult, December 2023; aiosmtpd test_smtpsmuggling).
* Dot-unstuffing (RFC 5321 section 4.5.2) removes one leading "." at the start of a logical line
  only; a "." after a bare LF is mid-line data and is kept.
* Line-end repair, done once here so every later stage (envelope, store, relay) sees clean CRLF
  text as RFC 5322 section 2.3 requires: a bare LF becomes CRLF, and a bare CR becomes CRLF too
  (the same rule as `smtplib`'s `_fix_eols`). A dot that then starts a line is re-stuffed by
  whoever sends the message on (smtplib `data()`, the POP3 RETR writer), so a smuggled
  "." line cannot end anybody else's DATA.
* Size: past `max_size` stored octets the reader drops what it holds, keeps reading lines until
  the terminator, and reports `overflow` (aiosmtpd's TOO_MUCH state, RFC 5321 section 4.2.5
  "answer once, after the data"). The session never desynchronises.
* Memory: given a `spool_dir`, the message goes into a `cgpop.spool.Spool`, which holds up to
  its threshold in memory and the rest in an unnamed file there; a message past the threshold
  comes out as a `SpooledMessage` (issue 10: ten 25 MB submissions at once took ~900 MB).

A chunk that does not end in b"\\n" is accepted as a fragment of a longer line (an engine that caps
its line buffer may pass an overlong line in pieces); a CR at the end of a fragment waits for the
next chunk to learn whether it pairs with an LF. The terminator is recognised only when it
arrives as one chunk, which an engine splitting at b"\\n" always does for a three-octet line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cgpop.spool import Octets, Spool, SpooledMessage

__all__ = ["Body", "BodyReader"]

_TERMINATOR = b".\r\n"


@dataclass(frozen=True, slots=True)
class Body:
    """The outcome of one XTND XMIT body.

    `message` is the unstuffed message with CRLF line ends (empty when `overflow`), in memory
    or spooled (close a SpooledMessage when done with it); `size` counts
    the octets the message has after unstuffing and line-end repair, including those dropped
    after the limit was crossed, so a reply can say how big the refused message was.
    """

    message: Octets
    overflow: bool
    size: int


class BodyReader:
    """Incremental reader of one body; make a new one for each XTND XMIT."""

    __slots__ = (
        "_at_line_start",
        "_buf",
        "_done",
        "_max_size",
        "_overflow",
        "_pending_cr",
        "_size",
    )

    def __init__(self, max_size: int, spool_dir: Path | None = None) -> None:
        if max_size < 0:
            raise ValueError("max_size must not be negative")
        self._max_size = max_size
        self._buf: bytearray | Spool = bytearray() if spool_dir is None else Spool(spool_dir)
        self._size = 0
        self._overflow = False
        self._done = False
        # The XTND XMIT command line ended with the CRLF that precedes the first body line.
        self._at_line_start = True
        # A CR at the end of a fragment: pairs with an LF starting the next chunk, or is bare.
        self._pending_cr = False

    @property
    def done(self) -> bool:
        """True once the terminator line has been read."""
        return self._done

    def feed_line(self, line: bytes) -> bool:
        """Consume one chunk (a line with its ending, or a fragment); True when the body is over.

        Feeding after the terminator is a programming error in the caller.
        """
        if self._done:
            raise RuntimeError("body already complete")
        if not line:
            return False
        if self._pending_cr:
            self._pending_cr = False
            if line.startswith(b"\n"):
                # The CR that ended the last fragment and this LF make one CRLF: a real line end.
                self._store(b"\r\n")
                self._at_line_start = True
                line = line[1:]
                if not line:
                    return False
            else:
                self._store(b"\r\n")  # bare CR, repaired as smtplib does
                self._at_line_start = False
        if self._at_line_start:
            # RFC 5321 section 4.5.2: the end of mail data is CRLF "." CRLF, nothing else.
            if line == _TERMINATOR:
                self._done = True
                return True
            if line.startswith(b"."):
                line = line[1:]  # RFC 5321 section 4.5.2: a leading dot loses one dot
        if line.endswith(b"\r\n"):
            self._store(_repair(line[:-2]) + b"\r\n")
            self._at_line_start = True
        elif line.endswith(b"\r"):
            self._store(_repair(line[:-1]))
            self._pending_cr = True
            self._at_line_start = False
        elif line.endswith(b"\n"):
            # A bare LF ends a chunk but not a logical line (RFC 5321 section 2.3.8).
            self._store(_repair(line))
            self._at_line_start = False
        else:
            self._store(_repair(line))
            self._at_line_start = False
        return False

    def result(self) -> Body:
        """The message, once `feed_line` returned True."""
        if not self._done:
            raise RuntimeError("body not complete")
        if self._overflow:
            return Body(message=b"", overflow=True, size=self._size)
        buf = self._buf
        if isinstance(buf, bytearray):
            return Body(message=bytes(buf), overflow=False, size=self._size)
        if buf.on_disk:
            return Body(message=SpooledMessage(b"", buf), overflow=False, size=self._size)
        message = buf.getvalue()
        buf.close()
        return Body(message=message, overflow=False, size=self._size)

    def _store(self, data: bytes) -> None:
        self._size += len(data)
        if self._overflow:
            return
        if self._size > self._max_size:
            # Drop what we hold at once (memory bound); keep counting until the terminator.
            self._overflow = True
            if isinstance(self._buf, bytearray):
                self._buf.clear()
            else:
                self._buf.close()
            return
        if isinstance(self._buf, bytearray):
            self._buf += data
        else:
            self._buf.write(data)


def _repair(data: bytes) -> bytes:
    """Turn every bare CR and bare LF inside `data` into CRLF (RFC 5322 section 2.3)."""
    if b"\r" not in data and b"\n" not in data:
        return data
    # CRLF pairs survive; what is left between them holds only lone CRs and LFs.
    parts = data.split(b"\r\n")
    return b"\r\n".join(p.replace(b"\r", b"\n").replace(b"\n", b"\r\n") for p in parts)
