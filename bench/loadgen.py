"""An asyncio POP3 and LMTP client that checks every reply it gets.

Checks: every status line is `+OK` and ends in CRLF; STAT agrees with LIST; a RETR body has
CRLF line ends only, is correctly dot-stuffed, and its octet count (after un-stuffing, without
the terminating ".\\r\\n") equals the LIST size; UIDL and LIST of a user are the same in every
session. Any failure is counted and aborts that session; a run with a failure is not a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from bench.certs import SERVER_NAME
from bench.dataset import User

HOST = "127.0.0.1"
# Big enough for a 50 MB RETR or a 100,000-line UIDL in one readuntil().
READ_LIMIT = 256 * 1024 * 1024


class CheckFailed(Exception):
    """A reply that a correct server would not send."""


class InUse(Exception):
    """-ERR [IN-USE] at login: the maildrop is locked by another session (RFC 2449/3206)."""


@dataclass(slots=True)
class Tally:
    """What a run observed, shared by all its clients."""

    sessions: int = 0
    errors: int = 0
    in_use_retries: int = 0
    retr_bytes: int = 0
    samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    # user -> (UIDL lines, LIST sizes) from the first session; later sessions must match.
    listings: dict[str, tuple[list[bytes], list[int]]] = field(default_factory=dict)

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < 20:
            self.samples.append(what)


@dataclass(frozen=True, slots=True)
class Transport:
    """How to reach the server: plain, implicit TLS, or plain then STLS."""

    port: int
    tls: ssl.SSLContext | None = None
    stls: bool = False
    # Source address to bind before connecting (idle: one address has ~28k ephemeral ports).
    source: str | None = None


class Pop3:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, t: Transport) -> Pop3:
        local = None if t.source is None else (t.source, 0)
        if t.tls is not None and not t.stls:
            r, w = await asyncio.open_connection(
                HOST,
                t.port,
                ssl=t.tls,
                server_hostname=SERVER_NAME,
                limit=READ_LIMIT,
                local_addr=local,
            )
        else:
            r, w = await asyncio.open_connection(HOST, t.port, limit=READ_LIMIT, local_addr=local)
        conn = cls(r, w)
        await conn.status("greeting")
        if t.stls:
            assert t.tls is not None
            conn.send(b"STLS\r\n")
            await conn.status("STLS")
            await w.start_tls(t.tls, server_hostname=SERVER_NAME)
        return conn

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def status(self, what: str) -> bytes:
        line = await self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise CheckFailed(f"{what}: truncated or bare-LF status line {line[:80]!r}")
        if not line.startswith(b"+OK"):
            if b"[IN-USE]" in line:
                raise InUse(line.decode(errors="replace"))
            raise CheckFailed(f"{what}: {line[:120]!r}")
        return line

    async def multiline(self, what: str) -> bytes:
        """The body of a multi-line reply, still dot-stuffed, ending in CRLF (or empty).

        readuntil(".\r\n") stops at the terminator or earlier at a line ending in a dot; it is
        the terminator when the dot starts a line. The chunk before always ends in CRLF (the
        status line's or the previous ".\r\n"), so a 3-byte chunk starts a line."""
        await self.status(what)
        parts = []
        while True:
            chunk = await self.reader.readuntil(b".\r\n")
            parts.append(chunk)
            if len(chunk) == 3 or chunk[-5:-3] == b"\r\n":
                break
        return b"".join(parts)[:-3]

    async def login(self, user: User) -> None:
        self.send(f"USER {user.name}\r\n".encode())
        await self.status("USER")
        self.send(f"PASS {user.password}\r\n".encode())
        await self.status("PASS")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


def unstuff(raw: bytes, what: str) -> bytes:
    """RFC 1939 section 3: strip the stuffed dot; reject bare LF and unstuffed dot lines."""
    if raw.count(b"\n") != raw.count(b"\r\n"):
        raise CheckFailed(f"{what}: bare LF in multi-line reply")
    framed = b"\r\n" + raw
    if framed.count(b"\r\n.") != framed.count(b"\r\n.."):
        raise CheckFailed(f"{what}: line starting with an unstuffed dot")
    return framed.replace(b"\r\n..", b"\r\n.")[2:]


def parse_listing(raw: bytes, what: str) -> list[bytes]:
    """`n value` lines of LIST/UIDL, checked to be numbered 1..n in order; returns the values."""
    out = []
    for i, line in enumerate(raw.split(b"\r\n")[:-1], 1):
        num, _, value = line.partition(b" ")
        if num != str(i).encode() or not value:
            raise CheckFailed(f"{what}: bad line {i}: {line[:80]!r}")
        out.append(value)
    return out


def check_stable(tally: Tally, user: User, uidls: list[bytes], sizes: list[int]) -> None:
    seen = tally.listings.setdefault(user.name, (uidls, sizes))
    if seen != (uidls, sizes):
        raise CheckFailed(f"{user.name}: UIDL/LIST changed between sessions")


async def maildrop(conn: Pop3, user: User, tally: Tally) -> list[int]:
    """STAT, UIDL, LIST (one at a time); returns the LIST sizes."""
    conn.send(b"STAT\r\n")
    stat = (await conn.status("STAT")).split()
    conn.send(b"UIDL\r\n")
    uidls = parse_listing(await conn.multiline("UIDL"), "UIDL")
    conn.send(b"LIST\r\n")
    sizes = [int(v) for v in parse_listing(await conn.multiline("LIST"), "LIST")]
    check_listing(stat, uidls, sizes)
    check_stable(tally, user, uidls, sizes)
    return sizes


def check_listing(stat: Sequence[bytes], uidls: list[bytes], sizes: list[int]) -> None:
    if len(stat) < 3 or int(stat[1]) != len(sizes) or int(stat[2]) != sum(sizes):
        raise CheckFailed(f"STAT {b' '.join(stat)!r} disagrees with LIST")
    if len(uidls) != len(sizes) or len(set(uidls)) != len(uidls):
        raise CheckFailed("UIDL count differs from LIST or has duplicates")


def check_retr(raw: bytes, n: int, size: int) -> int:
    body = unstuff(raw, f"RETR {n}")
    if len(body) != size:
        raise CheckFailed(f"RETR {n}: {len(body)} octets, LIST said {size}")
    return size


async def full_session(t: Transport, user: User, tally: Tally) -> None:
    """Login, STAT, UIDL, LIST, RETR every message, QUIT: one command at a time."""
    conn = await Pop3.connect(t)
    try:
        await conn.login(user)
        sizes = await maildrop(conn, user, tally)
        for n, size in enumerate(sizes, 1):
            conn.send(b"RETR %d\r\n" % n)
            tally.retr_bytes += check_retr(await conn.multiline(f"RETR {n}"), n, size)
        conn.send(b"QUIT\r\n")
        await conn.status("QUIT")
    finally:
        await conn.close()


async def pipelined_session(t: Transport, user: User, tally: Tally, depth: int = 8) -> None:
    """The same session with up to `depth` commands outstanding (RFC 2449 PIPELINING)."""
    conn = await Pop3.connect(t)
    try:
        conn.send(f"USER {user.name}\r\nPASS {user.password}\r\n".encode())
        await conn.status("USER")
        await conn.status("PASS")
        conn.send(b"STAT\r\nUIDL\r\nLIST\r\n")
        stat = (await conn.status("STAT")).split()
        uidls = parse_listing(await conn.multiline("UIDL"), "UIDL")
        sizes = [int(v) for v in parse_listing(await conn.multiline("LIST"), "LIST")]
        check_listing(stat, uidls, sizes)
        check_stable(tally, user, uidls, sizes)
        cmds = [b"RETR %d\r\n" % n for n in range(1, len(sizes) + 1)] + [b"QUIT\r\n"]
        conn.send(b"".join(cmds[:depth]))
        for i, _ in enumerate(cmds):
            if i + depth < len(cmds):
                conn.send(cmds[i + depth])
            if i < len(sizes):
                raw = await conn.multiline(f"RETR {i + 1}")
                tally.retr_bytes += check_retr(raw, i + 1, sizes[i])
            else:
                await conn.status("QUIT")
    finally:
        await conn.close()


async def run_sessions(
    t: Transport,
    users: list[User],
    total: int,
    clients: int,
    pipelined: bool = False,
    tally: Tally | None = None,
) -> tuple[Tally, float]:
    """`total` sessions over `clients` concurrent connections, users taken round-robin."""
    tally = tally or Tally()
    counter = iter(range(total))
    session = pipelined_session if pipelined else full_session

    async def client() -> None:
        for i in counter:
            user = users[i % len(users)]
            for _attempt in range(100):
                try:
                    await session(t, user, tally)
                    tally.sessions += 1
                    break
                except InUse:
                    tally.in_use_retries += 1
                    await asyncio.sleep(0.001)
                except (
                    CheckFailed,
                    OSError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    ssl.SSLError,
                    ValueError,
                ) as exc:
                    tally.fail(f"{user.name}: {type(exc).__name__}: {exc}")
                    break
            else:
                tally.fail(f"{user.name}: maildrop still in use after 100 attempts")

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return tally, time.perf_counter() - start


async def listing_latency(t: Transport, user: User, tally: Tally) -> None:
    """bigbox: time from connect to the end of LIST (login + STAT + UIDL + LIST)."""
    start = time.perf_counter()
    conn = await Pop3.connect(t)
    try:
        await conn.login(user)
        await maildrop(conn, user, tally)
        tally.latencies.append(time.perf_counter() - start)
        conn.send(b"QUIT\r\n")
        await conn.status("QUIT")
        tally.sessions += 1
    finally:
        await conn.close()


async def big_retr(t: Transport, user: User, tally: Tally) -> None:
    """bigmsg: time from sending RETR 1 to the terminator; octets checked afterwards."""
    conn = await Pop3.connect(t)
    try:
        await conn.login(user)
        sizes = await maildrop(conn, user, tally)
        start = time.perf_counter()
        conn.send(b"RETR 1\r\n")
        raw = await conn.multiline("RETR 1")
        tally.latencies.append(time.perf_counter() - start)
        tally.retr_bytes += check_retr(raw, 1, sizes[0])
        conn.send(b"QUIT\r\n")
        await conn.status("QUIT")
        tally.sessions += 1
    finally:
        await conn.close()


async def open_idle(
    t: Transport,
    users: list[User],
    tally: Tally,
    concurrency: int,
    sources: Sequence[str] = (),
) -> list[Pop3]:
    """Authenticated sessions left open, one per entry of `users` (an account may repeat); at
    most `concurrency` logins in flight at once; source addresses taken round-robin."""
    gate = asyncio.Semaphore(concurrency)
    conns: list[Pop3] = []
    ts = [replace(t, source=s) for s in sources] or [t]

    async def one(i: int, user: User) -> None:
        async with gate:
            try:
                conn = await Pop3.connect(ts[i % len(ts)])
            except (OSError, CheckFailed, ssl.SSLError) as exc:
                tally.fail(f"{user.name}: connect: {exc}")
                return
            conns.append(conn)
            try:
                await conn.login(user)
                tally.sessions += 1
            except (CheckFailed, InUse, OSError, asyncio.IncompleteReadError) as exc:
                tally.fail(f"{user.name}: login: {exc}")

    await asyncio.gather(*(one(i, u) for i, u in enumerate(users)))
    return conns


async def close_idle(conns: list[Pop3], tally: Tally, concurrency: int) -> None:
    """NOOP then QUIT on every idle session: each must still be alive."""
    gate = asyncio.Semaphore(concurrency)

    async def one(conn: Pop3) -> None:
        async with gate:
            try:
                conn.send(b"NOOP\r\nQUIT\r\n")
                await conn.status("NOOP")
                await conn.status("QUIT")
            except (CheckFailed, OSError, asyncio.IncompleteReadError) as exc:
                tally.fail(f"idle session lost: {exc}")
            finally:
                await conn.close()

    await asyncio.gather(*(one(c) for c in conns))


# ---------------------------------------------------------------------------------------------
# LMTP (RFC 2033): one connection per sender, one message per transaction, replies checked.


class Lmtp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Lmtp:
        r, w = await asyncio.open_connection(HOST, port, limit=READ_LIMIT)
        conn = cls(r, w)
        await conn.reply("greeting", b"220")
        w.write(b"LHLO bench.example\r\n")
        await conn.reply("LHLO", b"250")
        return conn

    async def reply(self, what: str, code: bytes) -> None:
        """A possibly multi-line reply (`250-...` continues, `250 ...` ends)."""
        while True:
            line = await self.reader.readline()
            if not line.startswith(code):
                raise CheckFailed(f"LMTP {what}: {line[:120]!r}")
            if line[3:4] != b"-":
                return

    async def deliver(self, sender: str, rcpt: str, msg: bytes) -> None:
        """MAIL, RCPT, DATA pipelined (RFC 2033 requires PIPELINING), then the stuffed body."""
        self.writer.write(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
        await self.reply("MAIL", b"250")
        await self.reply("RCPT", b"250")
        await self.reply("DATA", b"354")
        stuffed = (b"\r\n" + msg).replace(b"\r\n.", b"\r\n..")[2:]
        if not stuffed.endswith(b"\r\n"):
            stuffed += b"\r\n"
        self.writer.write(stuffed + b".\r\n")
        await self.reply("end of data", b"250")  # one reply per accepted RCPT

    async def close(self) -> None:
        self.writer.write(b"QUIT\r\n")
        with contextlib.suppress(CheckFailed, OSError, asyncio.IncompleteReadError):
            await self.reply("QUIT", b"221")
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def run_deliveries(
    port: int, jobs: list[tuple[str, bytes]], senders: int, tally: Tally | None = None
) -> tuple[Tally, float]:
    """Deliver (recipient, message) jobs over `senders` concurrent LMTP connections."""
    tally = tally or Tally()
    it = iter(jobs)

    async def sender() -> None:
        conn = await Lmtp.connect(port)
        try:
            for rcpt, msg in it:
                try:
                    await conn.deliver("bench@bench.example", rcpt, msg)
                    tally.sessions += 1
                except (CheckFailed, OSError, asyncio.IncompleteReadError) as exc:
                    tally.fail(f"deliver to {rcpt}: {exc}")
                    await conn.close()
                    conn = await Lmtp.connect(port)
        finally:
            await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(senders)))
    return tally, time.perf_counter() - start
