"""bigmsg's raw reader: a RETR read with large `recv_into` buffers and no per-line parsing.

The parsing client (loadgen.big_retr) un-stuffs and checks every line, so what it measures is
Python's parsing speed, not the server's. This reader checks only what frames the reply: the
`+OK` status line, the octet count of the dot-stuffed body against the size the harness computed
from the very message it stored (`stuffed_size`), and the final `CRLF.CRLF` (RFC 1939 section 3).
A correctly stuffed body never contains `CRLF.CRLF` before its end, so a reply that stops early
or runs on is caught by the count.

`RawReply` is the pure part (fed any split of the bytes, one at a time included); `raw_retr`
is the blocking session around it, plain or TLS, run in a thread so the harness's event loop
is not in the data path.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass

from bench.certs import SERVER_NAME

TERMINATOR = b"\r\n.\r\n"
# RFC 2449 section 4: a status line is at most 512 octets including its CRLF.
MAX_STATUS = 512
# One recv_into of up to 4 MiB: large enough that the syscall, not Python, sets the pace.
RECV_BUFFER = 4 * 1024 * 1024
# A stalled server fails the read instead of hanging the run.
TIMEOUT_S = 60.0


class RawCheckFailed(Exception):
    """The reply's framing or size is not what a correct server sends."""


def stuffed(message: bytes) -> bytes:
    """The RFC 1939 dot-stuffed form of a CRLF message ending in CRLF (without ".\\r\\n")."""
    return (b"\r\n" + message).replace(b"\r\n.", b"\r\n..")[2:]


class RawReply:
    """One multi-line reply counted, not parsed: status line, then `stuffed_size` octets of
    dot-stuffed body, then ".\\r\\n".

    feed() takes the bytes as they arrive, in any split, and returns True once the reply is
    complete: the octets after the status line reach `stuffed_size + 3`, or the data so far ends
    with the terminator (a short reply). check() then raises RawCheckFailed unless the count is
    exact and the last five octets are CRLF.CRLF. Octets past the expected end fail at once."""

    __slots__ = ("_status_buf", "body", "expected", "status", "tail")

    def __init__(self, stuffed_size: int) -> None:
        self.expected = stuffed_size + 3  # the stuffed body then ".\r\n"
        self.status = b""
        self.body = 0
        # The last five octets seen, status line included: an empty body's terminator
        # "\r\n.\r\n" starts with the status line's CRLF.
        self.tail = b""
        self._status_buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        if not self.status:
            self._status_buf += data
            end = self._status_buf.find(b"\r\n")
            if end < 0:
                if len(self._status_buf) > MAX_STATUS:
                    raise RawCheckFailed("status line longer than 512 octets")
                return False
            self.status = bytes(self._status_buf[: end + 2])
            if not self.status.startswith(b"+OK"):
                raise RawCheckFailed(f"RETR: {self.status[:120]!r}")
            rest = bytes(self._status_buf[end + 2 :])
            self._status_buf = bytearray()
            self.tail = self.status[-2:]
            return self._count(rest) if rest else False
        return self._count(data)

    def _count(self, data: bytes | bytearray | memoryview) -> bool:
        n = len(data)
        self.body += n
        self.tail = (self.tail + bytes(data[-5:]))[-5:] if n < 5 else bytes(data[-5:])
        if self.body > self.expected:
            raise RawCheckFailed(
                f"RETR: more than {self.expected} octets after the status line ({self.body})"
            )
        return self.body == self.expected or self.tail == TERMINATOR

    def check(self) -> None:
        if self.tail != TERMINATOR:
            raise RawCheckFailed(f"RETR: reply does not end in CRLF.CRLF (ends {self.tail!r})")
        if self.body != self.expected:
            raise RawCheckFailed(
                f"RETR: {self.body - 3} stuffed octets before the terminator, "
                f"expected {self.expected - 3}"
            )


@dataclass(frozen=True, slots=True)
class RawResult:
    seconds: float  # from sending RETR to the terminator
    octets: int  # after the status line, terminator included
    session_reused: bool | None  # TLS only


def _status(f: socket.socket, buf: bytearray) -> bytes:
    """One status line from a blocking socket (small replies before RETR only)."""
    while b"\r\n" not in buf:
        chunk = f.recv(4096)
        if not chunk:
            raise RawCheckFailed("connection closed before a status line")
        buf += chunk
        if len(buf) > MAX_STATUS:
            raise RawCheckFailed("status line longer than 512 octets")
    end = buf.index(b"\r\n") + 2
    line = bytes(buf[:end])
    del buf[:end]
    if not line.startswith(b"+OK"):
        raise RawCheckFailed(f"{line[:120]!r}")
    return line


def raw_retr(
    port: int,
    user: str,
    password: str,
    stuffed_size: int,
    *,
    host: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
    session: ssl.SSLSession | None = None,
) -> RawResult:
    """Log in (plain, or implicit TLS when `tls` is given), RETR 1 read raw, QUIT."""
    sock: socket.socket = socket.create_connection((host, port), timeout=TIMEOUT_S)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each command goes at once
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=SERVER_NAME, session=session)
        pending = bytearray()
        _status(sock, pending)
        sock.sendall(f"USER {user}\r\n".encode())
        _status(sock, pending)
        sock.sendall(f"PASS {password}\r\n".encode())
        _status(sock, pending)
        if pending:
            raise RawCheckFailed(f"unexpected octets after PASS: {bytes(pending[:80])!r}")
        reply = RawReply(stuffed_size)
        buf = bytearray(RECV_BUFFER)
        view = memoryview(buf)
        start = time.perf_counter()
        sock.sendall(b"RETR 1\r\n")
        while True:
            n = sock.recv_into(view)
            if n == 0:
                raise RawCheckFailed(f"connection closed after {reply.body} octets")
            if reply.feed(view[:n]):
                break
        seconds = time.perf_counter() - start
        reply.check()
        sock.sendall(b"QUIT\r\n")
        _status(sock, pending)
        reused = sock.session_reused if isinstance(sock, ssl.SSLSocket) else None
        return RawResult(seconds, reply.body, reused)
    finally:
        sock.close()
