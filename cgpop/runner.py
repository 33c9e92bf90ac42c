"""One POP3 session's runner: carries out the events of the sans-IO engine (cgpop/pop3/), in
order, with the services it is given, and writes the replies in batches.

Replies to pipelined commands are collected and written once per chunk of input.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cgpop import streams
from cgpop.access import Access, LoginResult
from cgpop.blocking import Run
from cgpop.errors import STORE_UNAVAILABLE, Pop3Error
from cgpop.livesessions import LiveRegistry, Local
from cgpop.login import LoginPolicy
from cgpop.logs import SessionLog
from cgpop.metrics import Pop3Meter
from cgpop.pop3.events import (
    Close,
    Commit,
    Event,
    FailedLogin,
    Grant,
    LoginOutcome,
    PasswordLogin,
    SaslCredentials,
    SaslLogin,
    Send,
    SendMessage,
    StartTls,
    Submit,
)
from cgpop.pop3.lines import LineBuffer
from cgpop.pop3.session import Policy, Session
from cgpop.spool import Octets
from cgpop.store.api import LiveSession, Snapshot, StoredMessage, TemporaryFailure
from cgpop.telemetry import TelemetryWriter, Transcript
from cgpop.tlsconf import ReloadableContext
from cgpop.wire import TERMINATOR, top_lines

# Flush collected replies once they pass this, so a pipelined burst cannot grow memory.
FLUSH_AT = 256 * 1024
# Read-ahead window for RETR/TOP: messages per worker-thread hop, and a byte bound so a
# session never holds more than this much message data in memory. The byte bound is the one
# that matters; the count only caps the rows of one read (64: a typical maildrop of small
# messages in one hop, where 32 took two).
READ_AHEAD = 64
READ_AHEAD_BYTES = 256 * 1024
# RETR sets \Seen at once for anyone looking (the admin CLI sees it while the session is open):
# a session's marks go to the \Seen group commit when the replies that carry their messages
# are written, and a batch lingers SEEN_LINGER seconds for the marks of other RETRs (one
# writer-thread hop and transaction per linger, not per RETR round: profiled at ~0.8 ms of
# server CPU per 50-message session). When a session ends its marks are written at once.
SEEN_LINGER = 0.02

# XTND XMIT (account, peer, message, login address): None when accepted for every recipient,
# else the reply.
SubmitFn = Callable[[str, str, Octets, str], Awaitable[Pop3Error | None]]
BODY_MISSING = Pop3Error("message body unavailable, the error is logged", "SYS/TEMP").reply()
# `cgpop sessions kill ID` (issue 12, section 3).
KILLED = Pop3Error("session closed by the administrator", "SYS/TEMP").reply()


@dataclass(frozen=True, slots=True)
class Services:
    """What a session's runner may use, and nothing else."""

    login: LoginPolicy
    read: Run  # blocking store reads, off the event loop (cgpop/blocking.py)
    write: Run  # blocking store writes, on the single writer
    read_messages: Callable[[Snapshot, Sequence[int]], dict[int, StoredMessage]]
    expunge: Callable[[int, Sequence[int]], int]
    mark_seen: Callable[[tuple[int, int]], object]  # the \Seen group commit
    submit: SubmitFn | None  # XTND XMIT, when enabled
    collect_soon: Callable[[], None]  # expunged messages may be collectable now
    tls: ReloadableContext | None
    policy: Callable[[bool, str], Policy]  # (TLS active, peer address) -> the session's Policy
    meter: Pop3Meter  # commands, octets sent, TLS handshakes, refusals (cgpop/metrics.py)
    # Issue 12, section 3: the live-session registry and the telemetry transcripts' writer.
    live: LiveRegistry | None = None
    telemetry: TelemetryWriter | None = None
    seen_now: Callable[[], None] = lambda: None  # write the lingering \Seen batch now


@dataclass(eq=False)
class Peer:
    """Who the session talks to, and as whom once logged in."""

    ip: str
    address: str  # "ip:port", as logged
    domain: str  # the listener's default domain
    account: str | None = None
    session_id: str = ""  # the connection's id, in the logs and the live-session registry
    since: float = field(default_factory=time.time)


def outcome_of(result: LoginResult) -> LoginOutcome:
    """The login policy's result as the engine takes it."""
    access = result.access
    if access is None:
        return LoginOutcome(error=result.error, counts_as_failure=result.counts_as_failure)
    grant = Grant(
        access.account,
        access.snapshot,
        may_seen=access.may_seen,
        may_delete=access.may_delete,
        may_expunge=access.may_expunge,
        login_address=access.login_address,
        may_submit=access.may_submit,
    )
    return LoginOutcome(grant=grant)


class SessionRunner:
    """Carries out one session's events, in order, with batched writes."""

    def __init__(
        self,
        services: Services,
        session: Session,
        peer: Peer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        lines: LineBuffer,
        slog: SessionLog,
    ) -> None:
        self.services, self.session, self.peer = services, session, peer
        self.reader, self.writer, self.lines, self.slog = reader, writer, lines, slog
        self.out: list[bytes] = []
        self.out_size = 0
        self.window: dict[int, StoredMessage] = {}
        self.logins = services.login.session(peer.ip, slog)
        self.access: Access | None = None  # the admitted login, for logout
        self.stats = services.meter.commands
        # Octets written to the client (the registry's sent_bytes), this session's telemetry
        # transcript when its account is traced, and an administrator's kill
        # (`idle` is set by the connection: True while waiting for input).
        self.sent = 0
        self.transcript: Transcript | None = None
        self.killed = False
        self.kill_sent = False
        self.idle: Callable[[], bool] = lambda: False
        self.seen: list[tuple[int, int]] = []  # (mailbox id, uid) not yet handed on
        self.marked = False  # marks were handed on since the last end_seen

    def send(self, data: bytes) -> None:
        self.out.append(data)
        self.out_size += len(data)

    async def flush(self) -> None:
        if self.seen:
            self.flush_seen()
        if self.out:
            self.writer.write(b"".join(self.out))
            self.stats.sent_bytes += self.out_size
            self.sent += self.out_size
            self.out.clear()
            self.out_size = 0
        if self.transcript is not None:
            self.transcript.flush()
        await self.writer.drain()

    async def run_events(self, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, Send):
                self.send(event.data)
                if self.transcript is not None:
                    self.transcript.reply(event.data)
                if self.out_size >= FLUSH_AT:
                    await self.flush()
            elif isinstance(event, Close):
                self.end_seen()
                await self.flush()
                self.writer.close()
            elif isinstance(event, PasswordLogin | SaslCredentials | SaslLogin | FailedLogin):
                await self.run_events(await self.login_step(event))
            elif isinstance(event, SendMessage):
                await self.send_message(event)
            elif isinstance(event, Commit):
                await self.run_events(await self.commit(event))
            elif isinstance(event, StartTls):
                await self.start_tls(event)
            elif isinstance(event, Submit):
                await self.run_events(self.session.submit_result(await self.submit(event)))

    async def login_step(
        self, event: PasswordLogin | SaslCredentials | SaslLogin | FailedLogin
    ) -> list[Event]:
        """One step of a login; the engine's answer to it. A store that cannot be used now
        (its database down) ends the login with -ERR [SYS/TEMP], not counted as a failure."""
        peer = self.peer
        try:
            if isinstance(event, PasswordLogin):
                result = await self.logins.password(
                    event.login,
                    peer.domain,
                    password=event.password,
                    apop_digest=event.apop_digest,
                    apop_banner=self.session.policy.apop_banner,
                )
                return self.session.login_result(self.admitted(result, event.login))
            if isinstance(event, SaslCredentials):
                creds, good = await self.logins.sasl_credentials(
                    event.authcid, peer.domain, event.password
                )
                return self.session.sasl_credentials(creds, good)
            if isinstance(event, FailedLogin):
                failed = LoginResult(
                    error=event.outcome.error, counts_as_failure=event.outcome.counts_as_failure
                )
                await self.logins.decide(failed, event.login, peer.domain)
                return self.session.login_result(event.outcome)
            result = await self.logins.sasl(event.login, event.proven_by, peer.domain)
            return self.session.login_result(self.admitted(result, event.login))
        except TemporaryFailure as exc:
            self.slog.warning("login refused, the store is unavailable: %s", exc)
            return self.session.login_unavailable(STORE_UNAVAILABLE)

    def admitted(self, result: LoginResult, login: str) -> LoginOutcome:
        if result.access is not None:
            self.access = result.access
            self.peer.account = result.access.account
            self.register(result.access, login)
        return outcome_of(result)

    def register(self, access: Access, login: str) -> None:
        """Issue 12, section 3: the login's row in the live-session registry, and its
        transcript when telemetry is on for the account (lines since connect included)."""
        live, peer = self.services.live, self.peer
        if live is None or not peer.session_id:
            return
        mailbox = access.snapshot.mailbox
        name = (
            mailbox.name if mailbox.owner == access.account else f"{mailbox.owner}/{mailbox.name}"
        )
        row = LiveSession(
            peer.session_id,
            live.node,
            peer.address,
            login[:200],
            access.account,
            name,
            "TRANSACTION",
            peer.since,
            self.sent,
            self.session.policy.tls_active,
        )
        live.opened(Local(row, self.progress, self.kill))
        writer = self.services.telemetry
        if writer is None or access.account.lower() not in live.telemetry:
            self.transcript = None
            return
        if self.transcript is None:
            self.transcript = Transcript(datetime.fromtimestamp(peer.since, UTC))
        self.transcript.start(
            writer,
            writer.path_for(access.account.lower(), self.transcript.started, peer.session_id),
        )

    def progress(self) -> tuple[str, int]:
        return self.session.state.value, self.sent + self.out_size

    def kill(self) -> None:
        """An administrator closes this session (`cgpop sessions kill`): at once when it waits
        for input, else after the command under way (the connection's loop checks `killed`).
        Without QUIT nothing is expunged."""
        self.killed = True
        if self.idle():
            self.send_killed()

    def send_killed(self) -> None:
        if self.kill_sent:
            return
        self.kill_sent = True
        if self.transcript is not None:
            self.transcript.reply(KILLED)
            self.transcript.flush()
        with contextlib.suppress(Exception):
            self.writer.write(KILLED)
            self.sent += len(KILLED)
            self.writer.close()

    def logout(self) -> None:
        """The connection is gone: an admitted login's maildrop closes and its slot frees."""
        if self.services.live is not None:
            self.services.live.closed(self.peer.session_id)
        if self.transcript is not None:
            self.transcript.close()
            self.transcript = None
        self.end_seen()
        if self.access is not None:
            self.services.login.logout(self.access)
            self.services.collect_soon()
            self.access = None

    async def start_tls(self, event: StartTls) -> None:
        """RFC 2595 section 4: reply, drop everything the client pipelined after STLS (no
        plaintext command injection), handshake, and restart the session's view."""
        self.send(event.reply)
        if self.transcript is not None:
            self.transcript.reply(event.reply)
        await self.flush()
        # Lines already read behind STLS, and bytes still in the stream's buffer, were sent in
        # cleartext: they must not be read as if they came through TLS.
        self.lines.discard()
        assert self.services.tls is not None
        await self.services.meter.handshake(
            streams.start_tls(self.reader, self.writer, self.services.tls.context, carry=False)
        )
        # SNI: a matching [[tls.certificates]] entry's domain for bare login names.
        ssl_object = self.writer.get_extra_info("ssl_object")
        self.peer.domain = self.services.tls.session_domain(ssl_object, self.peer.domain)
        self.session.tls_started(self.services.policy(True, self.peer.ip))
        self.slog.info("TLS started")

    async def submit(self, event: Submit) -> Pop3Error | None:
        submit = self.services.submit
        if submit is None or self.peer.account is None:
            return Pop3Error("submission is not available", "SYS/TEMP")
        return await submit(
            self.peer.account, self.peer.address, event.message, event.login_address
        )

    async def fetch(self, index: int) -> StoredMessage | None:
        """The stored message `index`, reading ahead: one worker-thread hop loads the next
        READ_AHEAD messages (bounded by READ_AHEAD_BYTES of small bodies) into a per-session
        window that is emptied as they are sent."""
        stored = self.window.pop(index, None)
        if stored is not None:
            return stored
        snap = self.session.snapshot
        deleted = self.session.deleted
        indexes: list[int] = []
        total = 0
        for i in range(index, min(len(snap), index + READ_AHEAD)):
            if i in deleted:
                continue
            total += snap.sizes[i]
            if indexes and total > READ_AHEAD_BYTES:
                break
            indexes.append(i)
        self.window = await self.services.read(self.services.read_messages, snap, indexes)
        return self.window.pop(index, None)

    async def send_message(self, event: SendMessage) -> None:
        snap = self.session.snapshot
        transcript = self.transcript
        try:
            stored = await self.fetch(event.index)
        except TemporaryFailure as exc:
            # Before the status line: one -ERR line, and the session goes on.
            self.slog.warning("message not sent, the store is unavailable: %s", exc)
            self.send(STORE_UNAVAILABLE.reply())
            if transcript is not None:
                transcript.reply(STORE_UNAVAILABLE.reply())
            return
        if stored is None:
            gone = Pop3Error("message is no longer available", "SYS/TEMP").reply()
            self.send(gone)
            if transcript is not None:
                transcript.reply(gone)
            return
        if stored.data is not None:
            self.send(event.status)
            parts: Iterable[bytes] = (stored.prefix, stored.data)
            if event.lines is not None:
                parts = list(top_lines(parts, event.lines))
            for part in parts:
                self.send(part)
            if transcript is not None:
                transcript.reply(event.status, *parts, TERMINATOR)
        elif not await self.stream_body(stored, event):
            return
        elif transcript is not None:
            transcript.reply_part(TERMINATOR)
            transcript.reply_end()
        self.send(TERMINATOR)
        if event.mark_seen:
            self.mark_seen((snap.mailbox.id, snap.uids[event.index]))

    def mark_seen(self, item: tuple[int, int]) -> None:
        """Queue a \\Seen mark until its reply is written (flush)."""
        self.seen.append(item)

    def end_seen(self) -> None:
        """The session ends: its marks are written now, not after the linger (before the
        QUIT reply, so a client that reads it finds them stored)."""
        if self.seen or self.marked:
            self.flush_seen()
            self.services.seen_now()
            self.marked = False

    def flush_seen(self) -> None:
        """Hand the queued \\Seen marks to the group commit: submitted together, they join
        one batch (one transaction on the writer thread)."""
        seen, self.seen = self.seen, []
        self.marked = True
        for item in seen:
            self.services.mark_seen(item)

    async def stream_body(self, stored: StoredMessage, event: SendMessage) -> bool:
        """Send the status line and a large body in bounded chunks read off the event loop.
        The body is opened (first chunk) before the status line, so a missing body is a
        clean -ERR and the session goes on (False)."""
        snap = self.session.snapshot
        read = self.services.read
        source = stored.chunks()
        try:
            try:
                first = await read(next, source, None)
            except (OSError, TemporaryFailure) as exc:
                self.slog.error(
                    "body of message uid %d in mailbox %d unreadable: %s",
                    snap.uids[event.index],
                    snap.mailbox.id,
                    exc,
                )
                missing = (
                    STORE_UNAVAILABLE.reply() if isinstance(exc, TemporaryFailure) else BODY_MISSING
                )
                self.send(missing)
                if self.transcript is not None:
                    self.transcript.reply(missing)
                return False
            self.send(event.status)
            if self.transcript is not None:
                self.transcript.reply_part(event.status)
            await self.flush()
            rest = itertools.chain(() if first is None else (first,), source)
            chunks = rest if event.lines is None else top_lines(rest, event.lines)
            while True:
                try:
                    part = await read(next, chunks, None)
                except (OSError, TemporaryFailure) as exc:
                    # Inside a multi-line reply only its octets may follow: end the
                    # connection rather than put an -ERR in the middle of the message.
                    self.slog.error("body read failed mid-message: %s", exc)
                    self.writer.transport.abort()
                    raise ConnectionResetError("body read failed") from exc
                if part is None:
                    return True
                self.writer.write(part)
                self.stats.sent_bytes += len(part)
                self.sent += len(part)
                if self.transcript is not None:
                    self.transcript.reply_part(part)
                await self.writer.drain()
        finally:
            source.close()  # the body, also when the client went away mid-message

    async def commit(self, event: Commit) -> list[Event]:
        snap = self.session.snapshot
        try:
            removed = await self.services.write(self.services.expunge, snap.mailbox.id, event.uids)
        except TemporaryFailure as exc:  # nothing removed; the client may try again later
            self.slog.warning("expunge failed, the store is unavailable: %s", exc)
            return self.session.commit_result(False, 0)
        except Exception:
            self.slog.exception("expunge failed")
            return self.session.commit_result(False, 0)
        self.slog.info("expunged %d of %d messages", removed, len(event.uids))
        self.services.collect_soon()
        return self.session.commit_result(True, len(snap) - len(event.uids))
