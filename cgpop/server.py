"""The thin asyncio shell (STYLE rule 8): listeners, one task per connection, and the work the
sans-IO engine asks for (logins, message streaming, commits) carried out off the event loop.

Replies to pipelined commands are collected and written once per chunk of input.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from cgpop.auth import Authenticator
from cgpop.config import Config, Endpoint
from cgpop.delivery import Deliverer
from cgpop.errors import Pop3Error
from cgpop.logs import SessionLog, redact
from cgpop import sasl
from cgpop.auth import AUTH_FAILED
from cgpop.penalty import Penalty
from cgpop.pop3.events import (
    Close,
    Commit,
    Event,
    LoginOutcome,
    PasswordLogin,
    SaslCredentials,
    SaslLogin,
    Send,
    SendMessage,
    StartTls,
    Submit,
)
from cgpop.pop3.lines import NEED_MORE, LineBuffer
from cgpop.pop3.session import Policy, Session
from cgpop.sasl.apop import make_apop_banner
from cgpop.tlsconf import ReloadableContext
from cgpop.store.api import NotFound
from cgpop.store.sqlite import SqliteStore
from cgpop.wire import TERMINATOR, top_lines

log = logging.getLogger("cgpop")
T = TypeVar("T")

READ_SIZE = 64 * 1024
# Flush collected replies once they pass this, so a pipelined burst cannot grow memory.
FLUSH_AT = 256 * 1024
SWEEP_INTERVAL = 15.0
INTERNAL_ERROR = Pop3Error("internal server error", "SYS/TEMP").reply()
TOO_MANY = Pop3Error("too many connections, try later", "SYS/TEMP").reply()


@dataclass(eq=False)
class Connection:
    id: str
    peer: str
    writer: asyncio.StreamWriter
    last_active: float = field(default_factory=time.monotonic)
    account: str | None = None


class ServerState:
    """Open connections, for limits, the idle sweeper and shutdown."""

    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self.per_ip: dict[str, int] = {}
        self.per_account: dict[str, int] = {}
        self.tasks: set[asyncio.Task[Any]] = set()


class Submitter(Protocol):
    """XTND XMIT behind the engine (xtnd/): None means accepted for every recipient."""

    async def submit(self, account: str, peer: str, message: bytes) -> Pop3Error | None: ...


class SeenBatcher:
    """RETR sets \\Seen at once, but many sessions' flag updates share one write transaction."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.pending: list[tuple[int, int]] = []
        self.task: asyncio.Task[None] | None = None

    def add(self, mailbox_id: int, uid: int) -> None:
        self.pending.append((mailbox_id, uid))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    await self.gateway.write(self.gateway.store.mark_seen, batch)
                except Exception:
                    log.exception("could not set \\Seen on %d messages", len(batch))
        finally:
            self.task = None

    async def drain(self) -> None:
        while self.task is not None:
            await asyncio.shield(self.task)


class Gateway:
    """Everything `cgpop serve` runs: the store, the POP3 and LMTP listeners."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = SqliteStore(
            config.server.data_dir,
            duplicate_window=(config.delivery.duplicate_window
                              if config.delivery.duplicate_suppression else None),
        )
        self.auth = Authenticator(self.store, admins=config.server.admins)
        self.deliverer = Deliverer(self.store, default_domain=config.server.default_domain,
                                   real_to_header=config.pop3.real_to_header)
        # Readers in parallel (WAL); writes through one thread so they never contend.
        self.readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cgpop-read")
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgpop-write")
        self.state = ServerState()
        self.seen = SeenBatcher(self)
        self.penalty = Penalty()
        self.tls: ReloadableContext | None = None
        if config.tls.cert is not None and config.tls.key is not None:
            self.tls = ReloadableContext(config.tls.cert, config.tls.key)
        self.submitter: Submitter | None = None
        # The XTND XMIT service (xtnd/service.py) with its relay worker, when enabled.
        self.submission: Any = None
        self.servers: list[asyncio.Server] = []
        self.bound: dict[str, list[tuple[str, int]]] = {"pop3": [], "pop3s": [], "lmtp": []}
        self._ids = itertools.count(1)
        self._stopping = asyncio.Event()
        self._collect_wanted = False

    # --- running blocking work ---
    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.readers, fn, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)

    # --- lifecycle ---
    async def start(self) -> None:
        await self.write(self.store.remove_orphan_files)
        await self.write(self.store.collect)
        for ep in self.config.pop3.listen:
            await self._listen("pop3", ep, self._pop3_handler(ep, tls=False))
        for ep in self.config.pop3.tls_listen:
            await self._listen("pop3s", ep, self._pop3_handler(ep, tls=True))
        from cgpop.lmtp import start_lmtp

        for ep in self.config.lmtp.listen:
            server = await start_lmtp(self, ep)
            self._register("lmtp", server)
        if self.config.xtnd.enabled:
            from xtnd.service import start_submission

            self.submission = await start_submission(self)
        asyncio.get_running_loop().create_task(self._sweeper())

    def _register(self, kind: str, server: asyncio.Server) -> None:
        self.servers.append(server)
        for sock in server.sockets:
            addr = sock.getsockname()
            self.bound[kind].append((addr[0], addr[1]))
            log.info("%s listening on %s:%d", kind.upper(), addr[0], addr[1])

    async def _listen(self, kind: str, ep: Endpoint, handler: Callable[..., Any]) -> None:
        try:
            server = await asyncio.start_server(handler, ep.host, ep.port, reuse_address=True,
                                                limit=READ_SIZE, backlog=1024)
        except OSError as exc:
            raise OSError(f"cannot listen on {ep} for {kind}: {exc.strerror}") from None
        self._register(kind, server)

    async def stop(self) -> None:
        """Close listeners, give sessions `shutdown_grace` seconds, then cancel the rest."""
        self._stopping.set()
        for server in self.servers:
            server.close()
        tasks = set(self.state.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.server.shutdown_grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        await self.seen.drain()
        if self.submission is not None:
            await self.submission.stop()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        await self.write(self.store.collect)
        self.readers.shutdown(wait=True)
        self.writer.shutdown(wait=True)
        self.store.close()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_tls)
        await self.start()
        await self._stopping.wait()
        log.info("shutting down")
        await self.stop()

    def reload_tls(self) -> None:
        """SIGHUP: re-read the certificate; sessions already in TLS keep theirs."""
        if self.tls is None:
            return
        try:
            self.tls.reload()
            log.info("TLS certificate reloaded")
        except ValueError as exc:
            log.error("TLS reload failed, keeping the old certificate: %s", exc)

    async def _sweeper(self) -> None:
        """Autologout (RFC 1939 section 3): idle sessions are closed silently. One timer for
        all connections instead of one per read keeps the per-session cost down."""
        idle = self.config.pop3.idle_timeout
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), SWEEP_INTERVAL)
            now = time.monotonic()
            for conn in list(self.state.connections):
                if now - conn.last_active > idle:
                    conn.writer.transport.abort()
            if self._collect_wanted:
                self._collect_wanted = False
                with contextlib.suppress(Exception):
                    await self.write(self.store.collect)

    # --- POP3 connections ---
    def _pop3_handler(self, ep: Endpoint, *, tls: bool) -> Callable[..., Any]:
        domain = self.config.pop3.listener_domains.get(str(ep), self.config.server.default_domain)

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.state.tasks.add(task)
            try:
                await self._pop3(reader, writer, domain, tls)
            finally:
                self.state.tasks.discard(task)

        return handler

    def policy(self, *, tls: bool, peer_ip: str) -> Policy:
        c = self.config
        loopback = peer_ip.startswith("127.") or peer_ip in ("::1", "::ffff:127.0.0.1")
        secure = tls or loopback
        always = c.pop3.plaintext_auth == "always"
        return Policy(
            hostname=c.server.hostname,
            apop_banner=make_apop_banner(c.server.hostname) if c.pop3.apop else "",
            plaintext_allowed=secure or always,
            stls_available=self.tls is not None,
            tls_active=tls,
            sasl_mechanisms=tuple(sasl.available(secure, always)),
            xtnd_enabled=c.xtnd.enabled and self.submitter is not None,
            xtnd_max_size=c.xtnd.max_message_size,
            max_bad_commands=c.pop3.max_bad_commands,
            max_auth_failures=c.pop3.max_auth_failures,
        )

    async def _pop3(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    domain: str, tls: bool) -> None:
        peername = writer.get_extra_info("peername") or ("?", 0)
        peer_ip = str(peername[0])
        conn = Connection(f"{os.getpid():x}-{next(self._ids)}", f"{peer_ip}:{peername[1]}",
                          writer)
        slog = SessionLog(log, "POP", conn.id, conn.peer)
        st = self.state
        cfg = self.config.pop3
        if len(st.connections) >= cfg.max_channels or st.per_ip.get(peer_ip, 0) >= cfg.max_per_ip:
            slog.warning("refused: channel limit reached")
            with contextlib.suppress(Exception):
                writer.write(TOO_MANY)
                await writer.drain()
            writer.close()
            return
        st.connections.add(conn)
        st.per_ip[peer_ip] = st.per_ip.get(peer_ip, 0) + 1
        slog.info("connected")
        session = Session(self.policy(tls=tls, peer_ip=peer_ip))
        lines = LineBuffer(cfg.max_line)
        runner = _Runner(self, session, conn, reader, writer, slog, domain, lines, peer_ip)
        try:
            if tls:
                # Implicit TLS (RFC 8314): handshake first, with the current certificate.
                assert self.tls is not None
                await writer.start_tls(self.tls.context)
            await runner.run_events(session.greeting())
            await runner.flush()
            while not session.closed:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                conn.last_active = time.monotonic()
                lines.push(data)
                while not session.closed:
                    lines.body_mode = session.in_body
                    line = lines.pop()
                    if line == NEED_MORE:
                        break
                    if line is None:
                        slog.info("overlong command line")
                        events = session.handle_overlong()
                    else:
                        if session.in_sasl:
                            slog.debug("C: <SASL response>")
                        elif not session.in_body:
                            slog.debug("C: %s", redact(line.decode("utf-8", "replace").rstrip()))
                        events = session.handle_line(line)
                    await runner.run_events(events)
                await runner.flush()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError) as exc:
            slog.info("connection lost: %s", type(exc).__name__)
        except asyncio.CancelledError:
            raise
        except Exception:
            slog.exception("internal error")
            with contextlib.suppress(Exception):
                writer.write(INTERNAL_ERROR)
        finally:
            st.connections.discard(conn)
            st.per_ip[peer_ip] -= 1
            if not st.per_ip[peer_ip]:
                del st.per_ip[peer_ip]
            if conn.account:
                st.per_account[conn.account] -= 1
                if not st.per_account[conn.account]:
                    del st.per_account[conn.account]
            if session.grant is not None:
                self.store.close_maildrop(session.grant.snapshot)
                self._collect_wanted = True
            with contextlib.suppress(Exception):
                writer.close()
            slog.info("disconnected")


class _Runner:
    """Carries out one session's events, in order, with batched writes."""

    def __init__(self, gw: Gateway, session: Session, conn: Connection,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slog: SessionLog,
                 domain: str, lines: LineBuffer, peer_ip: str) -> None:
        self.gw, self.session, self.conn, self.writer = gw, session, conn, writer
        self.reader, self.lines, self.peer_ip = reader, lines, peer_ip
        self.slog, self.domain = slog, domain
        self.out: list[bytes] = []
        self.out_size = 0

    def send(self, data: bytes) -> None:
        self.out.append(data)
        self.out_size += len(data)

    async def flush(self) -> None:
        if self.out:
            self.writer.write(b"".join(self.out))
            self.out.clear()
            self.out_size = 0
        await self.writer.drain()

    async def run_events(self, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, Send):
                self.send(event.data)
                if self.out_size >= FLUSH_AT:
                    await self.flush()
            elif isinstance(event, Close):
                await self.flush()
                self.writer.close()
            elif isinstance(event, PasswordLogin):
                await self.run_events(self.session.login_result(await self.login(event)))
            elif isinstance(event, SendMessage):
                await self.send_message(event)
            elif isinstance(event, Commit):
                await self.run_events(await self.commit(event))
            elif isinstance(event, StartTls):
                await self.start_tls(event)
            elif isinstance(event, SaslCredentials):
                creds, good = await self.gw.read(self.gw.auth.sasl_credentials, event.authcid,
                                                 self.domain, event.password)
                await self.run_events(self.session.sasl_credentials(creds, good))
            elif isinstance(event, SaslLogin):
                outcome = await self.sasl_login(event)
                await self.run_events(self.session.login_result(await self.admit(
                    outcome, event.proven_by or event.login)))
            elif isinstance(event, Submit):
                await self.run_events(self.session.submit_result(await self.submit(event)))

    async def start_tls(self, event: StartTls) -> None:
        """RFC 2595 section 4: reply, drop everything the client pipelined after STLS (no
        plaintext command injection), handshake, and restart the session's view."""
        self.send(event.reply)
        await self.flush()
        self.lines.discard()
        # Bytes that arrived after our last read are still in the stream's buffer; they were
        # sent in cleartext and must not be read as if they came through TLS.
        buffer = getattr(self.reader, "_buffer", None)
        if isinstance(buffer, bytearray):
            buffer.clear()
        assert self.gw.tls is not None
        await self.writer.start_tls(self.gw.tls.context)
        self.session.tls_started(self.gw.policy(tls=True, peer_ip=self.peer_ip))
        self.slog.info("TLS started")

    async def sasl_login(self, event: SaslLogin) -> LoginOutcome:
        gw = self.gw
        if event.proven_by is not None:
            admin = await gw.read(gw.auth.is_admin, event.proven_by, self.domain)
            if not admin:
                self.slog.info("%r may not log in as %r", event.proven_by[:100], event.login[:100])
                return LoginOutcome(error=AUTH_FAILED)
        return await gw.read(gw.auth.open_login, event.login, self.domain)

    async def submit(self, event: Submit) -> Pop3Error | None:
        gw = self.gw
        if gw.submitter is None or self.conn.account is None:
            return Pop3Error("submission is not available", "SYS/TEMP")
        return await gw.submitter.submit(self.conn.account, self.conn.peer, event.message)

    async def login(self, event: PasswordLogin) -> LoginOutcome:
        gw = self.gw
        outcome = await gw.read(
            lambda: gw.auth.password_login(
                event.login, self.domain, password=event.password,
                apop_digest=event.apop_digest, apop_banner=self.session.policy.apop_banner)
        )
        return await self.admit(outcome, event.login)

    async def admit(self, outcome: LoginOutcome, login: str) -> LoginOutcome:
        """Apply the failed-login delay and the per-account cap to a login's outcome."""
        gw = self.gw
        if outcome.grant is None:
            self.slog.info("login failed for %r", login[:100])
            if outcome.counts_as_failure:
                gw.penalty.record_failure(self.peer_ip, login.lower()[:320])
                # A growing delay per peer and per account slows guessing; the reply is the
                # same whatever failed.
                await asyncio.sleep(gw.penalty.delay_for(self.peer_ip, login.lower()[:320]))
            return outcome
        gw.penalty.record_success(self.peer_ip, login.lower()[:320])
        account = outcome.grant.account
        per_account = gw.state.per_account
        if per_account.get(account, 0) >= gw.config.pop3.max_per_account:
            gw.store.close_maildrop(outcome.grant.snapshot)
            self.slog.warning("login %s refused: per-account session limit", account)
            return LoginOutcome(error=Pop3Error("too many sessions for this account, try later",
                                                "SYS/TEMP"), counts_as_failure=False)
        per_account[account] = per_account.get(account, 0) + 1
        self.conn.account = account
        snap = outcome.grant.snapshot
        self.slog.info("login %s mailbox %s (%d messages)", account, snap.mailbox.name, len(snap))
        return outcome

    async def send_message(self, event: SendMessage) -> None:
        gw = self.gw
        snap = self.session.snapshot
        try:
            stored = await gw.read(gw.store.read_message, snap, event.index)
        except NotFound:
            self.send(Pop3Error("message is no longer available", "SYS/TEMP").reply())
            return
        self.send(event.status)
        if stored.data is not None:
            if event.lines is None:
                self.send(stored.prefix)
                self.send(stored.data)
            else:
                for part in top_lines((stored.prefix, stored.data), event.lines):
                    self.send(part)
        else:
            # Large body: stream it in bounded chunks read off the event loop.
            await self.flush()
            chunks = stored.chunks()
            if event.lines is not None:
                chunks = top_lines(chunks, event.lines)
            while True:
                part = await gw.read(next, chunks, None)
                if part is None:
                    break
                self.writer.write(part)
                await self.writer.drain()
        self.send(TERMINATOR)
        if event.mark_seen:
            gw.seen.add(snap.mailbox.id, snap.uids[event.index])

    async def commit(self, event: Commit) -> list[Event]:
        gw = self.gw
        snap = self.session.snapshot
        try:
            removed = await gw.write(gw.store.expunge, snap.mailbox.id, event.uids)
        except Exception:
            self.slog.exception("expunge failed")
            return self.session.commit_result(False, 0)
        self.slog.info("expunged %d of %d messages", removed, len(event.uids))
        gw._collect_wanted = True
        return self.session.commit_result(True, len(snap) - len(event.uids))


def bound_port(gw: Gateway, kind: str = "pop3") -> int:
    return gw.bound[kind][0][1]


__all__ = ["Gateway", "bound_port", "socket"]
