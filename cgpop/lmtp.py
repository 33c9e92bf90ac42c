"""The LMTP listener (RFC 2033): a real MTA (Postfix, Exim) delivers into cgpop here.

aiosmtpd supplies the protocol machinery (LHLO, MAIL, RCPT); this module supplies one reply per
recipient after DATA, RFC 2033 section 4.2, with each recipient's fate from the shared delivery
path. DATA is read here rather than by aiosmtpd, into a spool (cgpop/spool.py): aiosmtpd keeps
the whole message in memory, twice at its end, so four 50 MB messages took 590 MB (issue 10).
The reader keeps aiosmtpd's rules: the end is an exact CRLF "." CRLF (SMTP smuggling), a line
over `line_length_limit` is 500 after the data, more than `data_size_limit` octets 552.
`[lmtp] max_connections` bounds the sessions as `max_channels` does for POP.

LMTP has no authentication: a TCP peer outside `[lmtp] allow_from` (loopback by default) gets
421 and is closed before any command. A `unix:/path` listener is guarded by its file mode, 0660,
instead: the MTA's delivery agent needs the socket's group (Postfix's lmtp runs as `postfix`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, Envelope
from aiosmtpd.smtp import Session as SmtpSession

from cgpop import spool
from cgpop.config import Endpoint, LmtpConfig, UnixSocket
from cgpop.delivery import Result, Status
from cgpop.lmtpdata import DataBlocks, read_data
from cgpop.logs import SessionLog
from cgpop.spool import Octets, Spool, SpooledMessage
from cgpop.store.api import TemporaryFailure
from cgpop.streams import UnixSocketFile, peer_address

log = logging.getLogger("cgpop")
_ids = itertools.count(1)


TEMPORARY_FAILURE = "451 4.3.0 temporary local failure, try again later"
# RCPT: None when the recipient would be accepted, else why not (blocking work done off the
# event loop by the caller).
Check = Callable[[str], Awaitable[Status | None]]
# DATA: sender, recipients, message -> one result per recipient, once durable.
Deliver = Callable[[str, Sequence[str], Octets], Awaitable[list[Result]]]
# RFC 5321 section 3.8 / RFC 3463 4.3.2 "system not accepting network messages": the MTA
# retries later, as it does for a busy server.
TOO_MANY = b"421 4.3.2 too many connections, try later\r\n"
# A TCP peer outside `[lmtp] allow_from` (RFC 3463 4.7.1: delivery not authorized).
NOT_ALLOWED = b"421 4.7.1 access denied: not an allowed LMTP client\r\n"
# The file mode of a unix-socket listener: owner and group may deliver, nobody else.
SOCKET_MODE = 0o660
# Told each recipient's final fate (cgpop_lmtp_recipients_total): refused at RCPT, or the
# result of DATA; a failure that gets 451 is Status.TEMPORARY.
CountRecipient = Callable[[Status], None]


def _uncounted(status: Status) -> None:
    pass


class _Handler:
    def __init__(
        self, check: Check, deliver: Deliver, max_recipients: int, count: CountRecipient
    ) -> None:
        self.check, self.deliver, self.max_recipients = check, deliver, max_recipients
        self.count = count

    def _log(self, session: SmtpSession) -> SessionLog:
        if not hasattr(session, "cgpop_id"):
            session.cgpop_id = f"{os.getpid():x}-l{next(_ids)}"  # type: ignore[attr-defined]
        if isinstance(session.peer, str):
            peer = session.peer or "unix"  # a unix socket's peer has no address
        else:
            peer = f"{session.peer[0]}:{session.peer[1]}" if session.peer else "?"
        return SessionLog(log, "LMTP", session.cgpop_id, peer)  # type: ignore[attr-defined]

    async def handle_EHLO(
        self,
        server: LMTP,
        session: SmtpSession,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """RFC 2033 section 5: an LMTP server MUST implement PIPELINING, so LHLO says so
        (aiosmtpd reads commands in order, so pipelined input already works).
        ENHANCEDSTATUSCODES is not claimed: aiosmtpd's own replies (MAIL, RSET) lack them."""
        # The 5-argument hook takes over what aiosmtpd otherwise records itself.
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(
        self,
        server: LMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            self.count(Status.TEMPORARY)
            return "452 4.5.3 too many recipients"
        # Refuse unknown users, missing mailboxes and mailboxes that take no posting at RCPT,
        # so the MTA bounces them at once (RFC 2033 section 4.2); DATA stores where RCPT
        # found them (cgpop/delivery.py, Deliverer.prepare).
        try:
            refused = await self.check(address)
        except TemporaryFailure as exc:  # the store cannot be used now: the MTA retries
            self._log(session).warning("recipient %s not checked: %s", address[:200], exc)
            self.count(Status.TEMPORARY)
            return TEMPORARY_FAILURE
        except Exception:
            self._log(session).exception("recipient check failed")
            self.count(Status.TEMPORARY)
            return TEMPORARY_FAILURE
        if refused is not None:
            self._log(session).info("recipient %s refused: %s", address[:200], refused.value)
            self.count(refused)
            return Result(address, refused).lmtp_reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 recipient ok"

    async def handle_DATA(self, server: LMTP, session: SmtpSession, envelope: Envelope) -> str:
        content: Octets = getattr(envelope, "cgpop_message", None) or b""
        sender = envelope.mail_from or ""
        slog = self._log(session)
        try:
            results = await self.deliver(sender, envelope.rcpt_tos, content)
        except Exception as exc:
            # Never aiosmtpd's "500 Error: (ExceptionClass)": that would bounce the mail for
            # good and show our internals. 451 for each recipient: the MTA retries.
            if isinstance(exc, TemporaryFailure):  # the store cannot be used now
                slog.warning("delivery failed: %s", exc)
            else:
                slog.exception("delivery failed")
            for _ in envelope.rcpt_tos:
                self.count(Status.TEMPORARY)
            return "\r\n".join(TEMPORARY_FAILURE for _ in envelope.rcpt_tos)
        for r in results:
            self.count(r.status)
            slog.info(
                "from=<%s> to=<%s> size=%d %s",
                sender[:200],
                r.recipient[:200],
                spool.size_of(content),
                r.status.value,
            )
        # aiosmtpd writes the returned status and CRLF: joined lines give one reply each.
        return "\r\n".join(r.lmtp_reply for r in results)


# Parsed MAIL/RCPT arguments (_TrackedLMTP._getaddr); bounded, as arguments are client input.
MAX_ADDRESSES = 4096
_ADDRESSES: dict[tuple[str, int], tuple[str | None, str | None]] = {}


class _TrackedLMTP(LMTP):
    """aiosmtpd's LMTP, registered with its listeners so shutdown can end open sessions, capped
    at `[lmtp] max_connections`, and reading DATA into a spool."""

    def __init__(self, listeners: LmtpListeners, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listeners = listeners
        self._refused = False
        self._replies: list[bytes] = []  # 250 replies not yet written (push)
        self._flush_soon = False

    async def push(self, status: str | bytes) -> None:
        """aiosmtpd's push, writing the replies to pipelined commands together (RFC 2920: an
        MTA sends MAIL, RCPT and DATA at once): a 250 waits until the session next waits for
        input (one loop turn at most), any other reply goes out at once with those before it,
        so a message costs two writes instead of four. A 250 never precedes a close."""
        if isinstance(status, str):
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        self._replies.append(status + b"\r\n")
        if status.startswith(b"250"):
            if not self._flush_soon:
                self._flush_soon = True
                self.loop.call_soon(self._write_replies)
            return
        self._write_replies()
        await self._writer.drain()

    def _write_replies(self) -> None:
        self._flush_soon = False
        if not self._replies:
            return
        data = b"".join(self._replies)
        self._replies.clear()
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and not self._listeners.allowed(str(peer[0])):
            self._refuse(transport, NOT_ALLOWED, f"{peer[0]} is not in [lmtp] allow_from")
            return
        if len(self._listeners.sessions) >= self._listeners.config.max_connections:
            self._listeners.count_refused("lmtp_max_connections")
            self._refuse(transport, TOO_MANY, "too many connections")
            return
        super().connection_made(transport)
        self._listeners.sessions.add(self)
        if self.session is not None:
            self.event_handler._log(self.session).info("connected")

    def _refuse(self, transport: asyncio.BaseTransport, reply: bytes, why: str) -> None:
        """No session at all, so nothing of it is buffered: one reply and close."""
        self._refused = True
        peer = transport.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        log.warning("LMTP %s refused: %s", where, why)
        # A stream transport, typed as its base class; not an asyncio.WriteTransport instance
        # on uvloop, so no isinstance check (it failed there, and the refusal was never sent).
        stream = cast(asyncio.Transport, transport)
        stream.write(reply)
        stream.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._listeners.sessions.discard(self)
        if self.session is not None:
            self.event_handler._log(self.session).info("disconnected")
        super().connection_lost(exc)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser, remembered per argument: it builds a class and runs the
        RFC 5322 header parser on every MAIL and RCPT (profiled at ~5% of a delivery's CPU),
        and an MTA repeats the same few senders and recipients. A pure function of its input."""
        key = (arg, self.local_part_limit)
        found = _ADDRESSES.get(key)
        if found is None:
            found = super()._getaddr(arg)
            if len(_ADDRESSES) >= MAX_ADDRESSES:
                _ADDRESSES.clear()
            _ADDRESSES[key] = found
        return found

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._refused else super().eof_received()

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's smtp_DATA (1.4), reading into a Spool instead of a list of lines."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = Spool(self._listeners.spool_dir)
        try:
            state = await self._read_data(data)
            if state is not None:
                await self.push(state)
                self._set_post_data_state()  # type: ignore[no-untyped-call]
                return
            message: Octets = data.getvalue() if not data.on_disk else SpooledMessage(b"", data)
            self.envelope.cgpop_message = message  # type: ignore[attr-defined]
            self.envelope.original_content = self.envelope.content = b""
            status = await self._call_handler_hook("DATA")
        finally:
            data.close()
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self, data: Spool) -> str | None:
        """The DATA section, unstuffed (RFC 5321 section 4.5.2), into `data`, read in blocks
        (cgpop/lmtpdata.py); None when all is well, else the reply owed after the data (RFC
        5321 section 4.2.5)."""
        blocks = DataBlocks(self.line_length_limit, self.data_size_limit)
        try:
            await read_data(self._reader, blocks, data.write, data.discard)
        except asyncio.CancelledError:
            self._writer.close()
            raise
        return blocks.error


class LmtpListeners:
    """The LMTP listeners and their open sessions."""

    def __init__(
        self,
        config: LmtpConfig,
        hostname: str,
        spool_dir: Path,
        check: Check,
        deliver: Deliver,
        *,
        count_recipient: CountRecipient = _uncounted,
        count_refused: Callable[[str], None] = lambda reason: None,
    ) -> None:
        """`spool_dir`: where DATA larger than memory should hold goes (cgpop/spool.py).
        `count_recipient` and `count_refused` feed the metrics (cgpop/metrics.py)."""
        self.config, self.hostname, self.spool_dir = config, hostname, spool_dir
        self.handler = _Handler(check, deliver, config.max_recipients, count_recipient)
        self.count_refused = count_refused
        self.sessions: set[_TrackedLMTP] = set()
        self.allow_from = [ipaddress.ip_network(net) for net in config.allow_from]
        self.socket_files: list[UnixSocketFile] = []

    def allowed(self, peer_ip: str) -> bool:
        """Is this TCP peer in `[lmtp] allow_from`? (IPv4-mapped IPv6 counts as IPv4.)"""
        ip = peer_address(peer_ip)
        return ip is not None and any(ip in net for net in self.allow_from)

    async def start(
        self, ep: Endpoint | UnixSocket, sock: socket.socket | None = None
    ) -> asyncio.Server:
        """Listen on `ep`, or on `sock` when the parent process opened it (`[server] workers`;
        the parent then also owns a unix socket's file)."""

        def factory() -> _TrackedLMTP:
            return _TrackedLMTP(
                self,
                self.handler,
                hostname=self.hostname,
                ident="cgpop LMTP",
                data_size_limit=self.config.max_message_size,
                enable_SMTPUTF8=True,
                decode_data=False,
            )

        loop = asyncio.get_running_loop()
        if sock is not None:
            if sock.family == socket.AF_UNIX:
                return await loop.create_unix_server(factory, sock=sock)
            return await loop.create_server(factory, sock=sock)
        try:
            if isinstance(ep, UnixSocket):
                # Created at start, removed at stop (remove_sockets); a crash's leftover is
                # replaced (cgpop/streams.py).
                file = UnixSocketFile(ep.path, SOCKET_MODE)
                try:
                    server = await loop.create_unix_server(factory, sock=file.sock)
                except BaseException:
                    file.sock.close()
                    file.remove()
                    raise
                self.socket_files.append(file)
                return server
            return await loop.create_server(factory, ep.host, ep.port, reuse_address=True)
        except OSError as exc:
            raise OSError(f"cannot listen on {ep} for lmtp: {exc.strerror}") from None

    def remove_sockets(self) -> None:
        """Stop: remove the unix socket files this server created."""
        for file in self.socket_files:
            file.remove()
        self.socket_files.clear()

    def end_sessions(self) -> None:
        """Shutdown: tell connected MTAs (RFC 5321 section 3.8: 421) and close. A delivery in
        progress is one transaction: committed or not; the MTA retries what got no reply, and
        duplicate suppression catches a committed one."""
        for proto in list(self.sessions):
            # A stream transport (asyncio's or uvloop's), typed as its base class.
            transport = cast(asyncio.Transport | None, proto.transport)
            if transport is not None and not transport.is_closing():
                transport.write(b"421 4.3.2 cgpop shutting down\r\n")
                transport.close()
