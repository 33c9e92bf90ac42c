"""Stream helpers of the asyncio shell: the peer's address, the PROXY header a trusted proxy
sends first, the switch to TLS, the one-line refusal of a connection over a limit, and the file
of a listening unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import os
import socket
import ssl
import stat
from pathlib import Path
from typing import Any

from cgpop import proxyproto
from cgpop.errors import Pop3Error
from cgpop.logs import SessionLog

TOO_MANY = Pop3Error("too many connections, try later", "SYS/TEMP").reply()
BAD_PROXY = Pop3Error("PROXY protocol header expected").reply()
# A trusted proxy sends its header at once (HAProxy writes it on connect); a peer that has not
# finished it in this time is not a working proxy.
PROXY_TIMEOUT = 10.0


@functools.lru_cache(maxsize=4096)  # a few calls per connection, from few distinct peers
def peer_address(peer_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The peer as an address, IPv4-mapped IPv6 unwrapped (a dual-stack listener reports
    127.0.0.1 as ::ffff:127.0.0.1); None for what is not an IP address."""
    try:
        ip = ipaddress.ip_address(peer_ip)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


async def read_proxy_header(reader: asyncio.StreamReader) -> proxyproto.ProxyResult:
    """Read exactly one PROXY header, never a byte past it: what follows (POP3 commands, or a
    TLS ClientHello on an implicit-TLS listener) stays in the reader for the session. At most
    V1_MAX or 16 + V2_MAX_PAYLOAD bytes are read (proxyproto enforces both)."""
    buf = b""
    while True:
        result = proxyproto.parse(buf)
        if isinstance(result, proxyproto.ProxyResult):
            return result
        want = 1
        if buf.startswith(proxyproto.V2_SIGNATURE[:1]) and len(buf) < proxyproto.V2_HEADER:
            want = proxyproto.V2_HEADER - len(buf)
        elif len(buf) >= proxyproto.V2_HEADER and buf.startswith(proxyproto.V2_SIGNATURE):
            length = int.from_bytes(buf[14:16], "big")
            want = proxyproto.V2_HEADER + length - len(buf)
        buf += await reader.readexactly(want)


async def start_tls(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    context: ssl.SSLContext,
    *,
    carry: bool,
) -> None:
    """Switch the connection to TLS (server side). Bytes the stream has buffered but not handed
    out arrived in cleartext: with `carry` they are the start of the TLS handshake (after a
    PROXY header) and go to the TLS layer; without it (STLS) they are dropped (RFC 2595
    section 4: no plaintext command injection)."""
    # StreamReader has no public way to take back unread bytes.
    buffer = getattr(reader, "_buffer", None)
    pending = b""
    if isinstance(buffer, bytearray):
        pending = bytes(buffer) if carry else b""
        buffer.clear()
    if not pending:
        await writer.start_tls(context)
        return
    transport = writer.transport
    before = transport.get_protocol()
    task = asyncio.ensure_future(writer.start_tls(context))
    # loop.start_tls swaps in the TLS protocol before it waits for the handshake; hand it the
    # bytes as a transport would (BufferedProtocol), then let the handshake finish.
    # It does so within an iteration or two of the loop (after drain), so this is no real poll.
    while transport.get_protocol() is before and not task.done():
        await asyncio.sleep(0)
    proto: Any = transport.get_protocol()
    if not task.done():
        # Duck-typed: uvloop's compiled SSLProtocol is buffered but no asyncio.BufferedProtocol.
        if hasattr(proto, "get_buffer") and hasattr(proto, "buffer_updated"):
            while pending:
                view = memoryview(proto.get_buffer(len(pending))).cast("B")
                n = min(len(view), len(pending))
                view[:n] = pending[:n]
                proto.buffer_updated(n)
                pending = pending[n:]
        elif hasattr(proto, "data_received"):
            proto.data_received(pending)
        else:  # never drop handshake bytes silently: the client would hang
            task.cancel()
            raise ConnectionError("cannot hand early TLS bytes to the TLS layer")
    await task


async def proxy_source(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slog: SessionLog
) -> tuple[str, int] | None:
    """Read the PROXY header a trusted peer must send first; the real client's address and
    port (proxyproto.client_of: the socket's own peer only for a v2 LOCAL, UNKNOWN_PEER when
    the proxy names nobody), or None after refusing the connection."""
    try:
        result = await asyncio.wait_for(read_proxy_header(reader), PROXY_TIMEOUT)
    except (proxyproto.ProxyError, asyncio.IncompleteReadError, TimeoutError) as exc:
        slog.warning(
            "refused: no valid PROXY header from a trusted proxy (%s)",
            type(exc).__name__ if not isinstance(exc, proxyproto.ProxyError) else exc,
        )
        with contextlib.suppress(Exception):
            writer.write(BAD_PROXY)
            await writer.drain()
        return None
    peername = writer.get_extra_info("peername") or ("?", 0)
    return proxyproto.client_of(result, (str(peername[0]), int(peername[1])))


async def refuse(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    tls: ssl.SSLContext | None,
    slog: SessionLog,
    why: str,
) -> None:
    """Past a connection limit: `-ERR [SYS/TEMP] ... try later` and close at once. On an
    implicit-TLS listener (`tls` given) the reply is sent in TLS, bounded by a short handshake
    timeout."""
    slog.warning("refused: %s", why)
    with contextlib.suppress(Exception):
        if tls is not None:
            await asyncio.wait_for(start_tls(reader, writer, tls, carry=True), PROXY_TIMEOUT)
        writer.write(TOO_MANY)
        await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


class UnixSocketFile:
    """A unix stream socket bound at `path` with file mode `mode`, not yet listening (the event
    loop's create_unix_server listens). The mode is set between bind and listen, so no client
    can connect while the file still has the umask's mode: before listen a connect is refused.

    A stale socket left by a crash (nothing accepts on it) is replaced; a live one, or anything
    that is not a socket, is refused with an OSError (nothing else is ever deleted)."""

    def __init__(self, path: Path, mode: int) -> None:
        self.path = path
        _clear_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fspath(path))
            os.chmod(path, mode)
            st = path.lstat()
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock
        self._identity = (st.st_dev, st.st_ino)

    def remove(self) -> None:
        """Remove the file at stop, unless it is no longer ours (another process bound a new
        socket there since). Identity is (device, inode): a file that replaced ours after ours
        was deleted may reuse its inode number, and is then removed too."""
        with contextlib.suppress(OSError):
            st = self.path.lstat()
            if (st.st_dev, st.st_ino) == self._identity:
                self.path.unlink()


def _clear_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, "exists and is not a socket (refusing to replace it)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Non-blocking: a live server whose backlog is full answers EAGAIN instead of blocking.
    probe.setblocking(False)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:  # nobody accepts: left over from a crash
        path.unlink()
        return
    except FileNotFoundError:
        return
    except BlockingIOError:
        pass
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "in use: another process listens on this socket")
