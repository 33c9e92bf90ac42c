"""The tls workload's resuming variant: each client offers the TLS session of its previous
connection (`ssl_context.wrap_socket(..., session=previous.session)`), as a real client that
reconnects every few minutes does, and records whether the server resumed it
(`sslsock.session_reused`).

asyncio's TLS transports take no `session`, so this client runs blocking sockets, one thread per
concurrent client (the GIL is released in socket and TLS calls). Every reply gets the same
checks as loadgen's sessions: +OK, CRLF, STAT against LIST, stuffing and RETR sizes, UIDL/LIST
stable per user.
"""

from __future__ import annotations

import itertools
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from bench.certs import SERVER_NAME
from bench.dataset import User
from bench.loadgen import (
    CheckFailed,
    InUse,
    Tally,
    check_listing,
    check_retr,
    check_stable,
    parse_listing,
)

HOST = "127.0.0.1"
TIMEOUT_S = 60.0
MAX_LINE = 64 * 1024  # far above any reply line of these sessions; a longer one is a failure


@dataclass(slots=True)
class Resumption:
    """Counts over one run: sessions that offered a previous TLS session, and those resumed."""

    offered: int = 0
    reused: int = 0


class SyncPop3:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.f = sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def status(self, what: str) -> bytes:
        line = self.f.readline(MAX_LINE)
        if not line.endswith(b"\r\n"):
            raise CheckFailed(f"{what}: truncated or bare-LF status line {line[:80]!r}")
        if not line.startswith(b"+OK"):
            if b"[IN-USE]" in line:
                raise InUse(line.decode(errors="replace"))
            raise CheckFailed(f"{what}: {line[:120]!r}")
        return line

    def multiline(self, what: str) -> bytes:
        """The body of a multi-line reply, still dot-stuffed (as loadgen.Pop3.multiline)."""
        self.status(what)
        parts: list[bytes] = []
        while True:
            line = self.f.readline(MAX_LINE)
            if line == b".\r\n":
                return b"".join(parts)
            if not line.endswith(b"\n"):
                raise CheckFailed(f"{what}: connection closed inside the reply")
            parts.append(line)

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def connect(
    port: int, ctx: ssl.SSLContext, stls: bool, session: ssl.SSLSession | None
) -> tuple[SyncPop3, ssl.SSLSocket]:
    raw = socket.create_connection((HOST, port), timeout=TIMEOUT_S)
    try:
        if stls:
            plain = SyncPop3(raw)
            plain.status("greeting")
            plain.send(b"STLS\r\n")
            plain.status("STLS")
            plain.f.close()  # nothing is buffered: the server waits for the ClientHello
            tls = ctx.wrap_socket(raw, server_hostname=SERVER_NAME, session=session)
            return SyncPop3(tls), tls
        tls = ctx.wrap_socket(raw, server_hostname=SERVER_NAME, session=session)
        conn = SyncPop3(tls)
        conn.status("greeting")
        return conn, tls
    except BaseException:
        raw.close()
        raise


def full_session(
    port: int,
    ctx: ssl.SSLContext,
    stls: bool,
    user: User,
    tally: Tally,
    session: ssl.SSLSession | None,
) -> tuple[ssl.SSLSession | None, bool]:
    """loadgen.full_session over a blocking TLS socket; returns (session to offer next time,
    whether this connection resumed the one offered)."""
    conn, tls = connect(port, ctx, stls, session)
    try:
        conn.send(f"USER {user.name}\r\n".encode())
        conn.status("USER")
        conn.send(f"PASS {user.password}\r\n".encode())
        conn.status("PASS")
        conn.send(b"STAT\r\n")
        stat = conn.status("STAT").split()
        conn.send(b"UIDL\r\n")
        uidls = parse_listing(conn.multiline("UIDL"), "UIDL")
        conn.send(b"LIST\r\n")
        sizes = [int(v) for v in parse_listing(conn.multiline("LIST"), "LIST")]
        check_listing(stat, uidls, sizes)
        check_stable(tally, user, uidls, sizes)
        for n, size in enumerate(sizes, 1):
            conn.send(b"RETR %d\r\n" % n)
            tally.retr_bytes += check_retr(conn.multiline(f"RETR {n}"), n, size)
        conn.send(b"QUIT\r\n")
        conn.status("QUIT")
        # Read after the exchange: a TLS 1.3 ticket arrives after the handshake.
        return tls.session, bool(tls.session_reused)
    finally:
        conn.close()


def run_sessions(
    port: int,
    ctx: ssl.SSLContext,
    stls: bool,
    users: list[User],
    total: int,
    clients: int,
    tally: Tally,
) -> tuple[Resumption, float]:
    """`total` sessions over `clients` threads; each thread offers its previous session."""
    counter = itertools.count()
    lock = threading.Lock()
    res = Resumption()

    def client() -> None:
        previous: ssl.SSLSession | None = None
        while True:
            with lock:
                i = next(counter)
            if i >= total:
                return
            user = users[i % len(users)]
            for _attempt in range(100):
                try:
                    offered = previous is not None
                    previous, reused = full_session(port, ctx, stls, user, tally, previous)
                    with lock:
                        tally.sessions += 1
                        res.offered += offered
                        res.reused += reused
                    break
                except InUse:
                    with lock:
                        tally.in_use_retries += 1
                    time.sleep(0.001)
                except (CheckFailed, OSError, ssl.SSLError, ValueError) as exc:
                    with lock:
                        tally.fail(f"{user.name}: {type(exc).__name__}: {exc}")
                    break
            else:
                with lock:
                    tally.fail(f"{user.name}: maildrop still in use after 100 attempts")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return res, time.perf_counter() - start
