"""Message octets on the POP3 wire: CRLF normalisation and dot-stuffing, done once, here.

RFC 1939 section 3: multi-line responses byte-stuff every line that begins with the
termination octet "." and end with ".\r\n". cgpop stuffs a message once, at delivery, and
stores the stuffed form, so RETR and TOP send stored octets unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_LINE_END = re.compile(rb"\r\n|\r(?!\n)|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)

TERMINATOR = b".\r\n"


def normalize_crlf(data: bytes) -> bytes:
    """Every line ending (CRLF, bare LF, bare CR) becomes CRLF; a final CRLF is added if missing.
    The result's length is the message size POP3 reports (RFC 1939 section 11)."""
    out = _LINE_END.sub(b"\r\n", data)
    if not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


def dot_stuff(normalized: bytes) -> bytes:
    """Stuff a CRLF-normalised message: each line starting with "." gets one more, the first
    line included. `^` with MULTILINE matches after every LF, which here ends every line."""
    return _LEADING_DOT.sub(b"..", normalized)


def top_lines(chunks: Iterable[bytes], body_lines: int) -> Iterator[bytes]:
    """RFC 1939 TOP: the header, the blank line after it, then `body_lines` body lines.

    Works on stored (stuffed, CRLF) octets chunk by chunk; stuffing maps lines one to one, so
    counting stuffed lines counts message lines. Memory is bounded by a chunk plus one line.
    """
    in_header = True
    remaining = body_lines
    carry = b""
    for chunk in chunks:
        buf = carry + chunk if carry else chunk
        pos = 0
        while True:
            if not in_header and remaining == 0:
                if pos:
                    yield buf[:pos]
                return
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            if in_header:
                if nl - pos == 1 and buf[pos] == 0x0D:
                    in_header = False
            else:
                remaining -= 1
            pos = nl + 1
        if pos:
            yield buf[:pos]
        carry = buf[pos:]
    if carry:
        yield carry
