"""The LMTP listener (RFC 2033): a real MTA (Postfix, Exim) delivers into cgpop here.

aiosmtpd supplies the protocol machinery (LHLO, the DATA reader with its size limit, the
SMTP-smuggling-safe end of data); this module supplies one reply per recipient after DATA,
RFC 2033 section 4.2, with each recipient's fate from the shared delivery path.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope
from aiosmtpd.smtp import Session as SmtpSession

from cgpop.config import Endpoint, LmtpConfig
from cgpop.delivery import Result, Status
from cgpop.logs import SessionLog

log = logging.getLogger("cgpop")
_ids = itertools.count(1)


TEMPORARY_FAILURE = "451 4.3.0 temporary local failure, try again later"
# RCPT: None when the recipient would be accepted, else why not (blocking work done off the
# event loop by the caller).
Check = Callable[[str], Awaitable[Status | None]]
# DATA: sender, recipients, message -> one result per recipient, once durable.
Deliver = Callable[[str, Sequence[str], bytes], Awaitable[list[Result]]]


class _Handler:
    def __init__(self, check: Check, deliver: Deliver, max_recipients: int) -> None:
        self.check, self.deliver, self.max_recipients = check, deliver, max_recipients

    def _log(self, session: SmtpSession) -> SessionLog:
        if not hasattr(session, "cgpop_id"):
            session.cgpop_id = f"{os.getpid():x}-l{next(_ids)}"  # type: ignore[attr-defined]
        if isinstance(session.peer, str):
            peer = session.peer
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
            return "452 4.5.3 too many recipients"
        # Refuse unknown users, missing mailboxes and mailboxes that take no posting at RCPT,
        # so the MTA bounces them at once (RFC 2033 section 4.2); DATA checks again.
        try:
            refused = await self.check(address)
        except Exception:
            self._log(session).exception("recipient check failed")
            return TEMPORARY_FAILURE
        if refused is not None:
            self._log(session).info("recipient %s refused: %s", address[:200], refused.value)
            return Result(address, refused).lmtp_reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 recipient ok"

    async def handle_DATA(self, server: LMTP, session: SmtpSession, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        if isinstance(content, str):  # pragma: no cover - decode_data is off
            content = content.encode("utf-8", "surrogateescape")
        sender = envelope.mail_from or ""
        slog = self._log(session)
        try:
            results = await self.deliver(sender, envelope.rcpt_tos, content)
        except Exception:
            # Never aiosmtpd's "500 Error: (ExceptionClass)": that would bounce the mail for
            # good and show our internals. 451 for each recipient: the MTA retries.
            slog.exception("delivery failed")
            return "\r\n".join(TEMPORARY_FAILURE for _ in envelope.rcpt_tos)
        for r in results:
            slog.info(
                "from=<%s> to=<%s> size=%d %s",
                sender[:200],
                r.recipient[:200],
                len(content),
                r.status.value,
            )
        # aiosmtpd writes the returned status and CRLF: joined lines give one reply each.
        return "\r\n".join(r.lmtp_reply for r in results)


class _TrackedLMTP(LMTP):
    """aiosmtpd's LMTP, registered with its listener so shutdown can end open sessions."""

    def __init__(self, sessions: set[_TrackedLMTP], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sessions = sessions

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._sessions.add(self)
        if self.session is not None:
            self.event_handler._log(self.session).info("connected")

    def connection_lost(self, exc: Exception | None) -> None:
        self._sessions.discard(self)
        if self.session is not None:
            self.event_handler._log(self.session).info("disconnected")
        super().connection_lost(exc)


class LmtpListeners:
    """The LMTP listeners and their open sessions."""

    def __init__(self, config: LmtpConfig, hostname: str, check: Check, deliver: Deliver) -> None:
        self.config, self.hostname = config, hostname
        self.handler = _Handler(check, deliver, config.max_recipients)
        self.sessions: set[_TrackedLMTP] = set()

    async def start(self, ep: Endpoint) -> asyncio.Server:
        def factory() -> _TrackedLMTP:
            return _TrackedLMTP(
                self.sessions,
                self.handler,
                hostname=self.hostname,
                ident="cgpop LMTP",
                data_size_limit=self.config.max_message_size,
                enable_SMTPUTF8=True,
                decode_data=False,
            )

        loop = asyncio.get_running_loop()
        try:
            return await loop.create_server(factory, ep.host, ep.port, reuse_address=True)
        except OSError as exc:
            raise OSError(f"cannot listen on {ep} for lmtp: {exc.strerror}") from None

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
