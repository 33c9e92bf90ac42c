"""The thin asyncio shell (STYLE rule 8): listeners, one task per connection, and the work the
sans-IO engine asks for (logins, message streaming, commits) carried out off the event loop.

Replies to pipelined commands are collected and written once per chunk of input.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import secrets
import signal
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from cgpop import alerts, proxyproto, sasl, sdnotify, tlsconf
from cgpop.auth import AUTH_FAILED, Authenticator
from cgpop.config import Config, Endpoint
from cgpop.delivery import Deliverer, Prepared, Result
from cgpop.errors import Pop3Error
from cgpop.lmtp import end_sessions, start_lmtp
from cgpop.logs import SessionLog, redact
from cgpop.penalty import Penalty, PenaltyPolicy
from cgpop.pop3.events import (
    Close,
    Commit,
    Event,
    FailedLogin,
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
from cgpop.reload import reload_config
from cgpop.sasl.apop import make_apop_banner
from cgpop.store.api import StoredMessage
from cgpop.store.sqlite import SqliteStore
from cgpop.tlsconf import ReloadableContext
from cgpop.wire import TERMINATOR, top_lines

log = logging.getLogger("cgpop")
T = TypeVar("T")
Item = TypeVar("Item")
R = TypeVar("R")

READ_SIZE = 64 * 1024
# Flush collected replies once they pass this, so a pipelined burst cannot grow memory.
FLUSH_AT = 256 * 1024
# Read-ahead window for RETR/TOP: messages per worker-thread hop, and a byte bound so a
# session never holds more than this much message data in memory.
READ_AHEAD = 32
READ_AHEAD_BYTES = 256 * 1024
SWEEP_INTERVAL = 15.0
PRUNE_INTERVAL = 3600.0
INTERNAL_ERROR = Pop3Error("internal server error", "SYS/TEMP").reply()
BODY_MISSING = Pop3Error("message body unavailable, the error is logged", "SYS/TEMP").reply()
SHUTTING_DOWN = Pop3Error("server shutting down", "SYS/TEMP").reply()
TOO_MANY = Pop3Error("too many connections, try later", "SYS/TEMP").reply()
BAD_PROXY = Pop3Error("PROXY protocol header expected").reply()
# A trusted proxy sends its header at once (HAProxy writes it on connect); a peer that has not
# finished it in this time is not a working proxy.
PROXY_TIMEOUT = 10.0
FAKE_SALT_KEY_FILE = "sasl-fake-salt.key"


@dataclass(eq=False)
class Connection:
    id: str
    peer: str
    writer: asyncio.StreamWriter
    last_active: float = field(default_factory=time.monotonic)
    account: str | None = None
    # True while waiting for the client's next input: nothing half-done, safe to close.
    idle: bool = True


class ServerState:
    """Open connections, for limits, the idle sweeper and shutdown."""

    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self.per_ip: dict[str, int] = {}
        self.per_account: dict[str, int] = {}
        self.tasks: set[asyncio.Task[Any]] = set()


class Submitter(Protocol):
    """XTND XMIT behind the engine (xtnd/): None means accepted for every recipient."""

    async def submit(
        self, account: str, peer: str, message: bytes, login_address: str = ""
    ) -> Pop3Error | None: ...


class GroupCommit(Generic[Item, R]):
    """Items submitted while one batch is being written join the next one, so many sessions'
    writes share one transaction (and, for deliveries, one fsync). `write` runs in the writer
    thread and returns one result per item; each submitter's future gets its own."""

    def __init__(
        self, gateway: Gateway, write: Callable[[list[Item]], list[R]], max_batch: int = 256
    ) -> None:
        self.gateway = gateway
        self.write_batch = write
        self.max_batch = max_batch
        self.pending: list[tuple[Item, asyncio.Future[R]]] = []
        self.task: asyncio.Task[None] | None = None

    def submit(self, item: Item) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self.pending.append((item, future))
        if self.task is None:
            self.task = loop.create_task(self._run())
        return future

    async def _run(self) -> None:
        try:
            while self.pending:
                batch = self.pending[: self.max_batch]
                del self.pending[: self.max_batch]
                try:
                    results = await self.gateway.write(self.write_batch, [i for i, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():  # its submitter was cancelled (client gone)
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
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
            duplicate_window=(
                config.delivery.duplicate_window if config.delivery.duplicate_suppression else None
            ),
        )
        self.auth = Authenticator(
            self.store, admins=config.server.admins, login_cache_ttl=config.server.login_cache_ttl
        )
        self.deliverer = Deliverer(
            self.store,
            default_domain=config.server.default_domain,
            real_to_header=config.pop3.real_to_header,
        )
        # Readers in parallel (WAL); writes through one thread so they never contend.
        self.readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cgpop-read")
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgpop-write")
        self.state = ServerState()
        # RETR sets \\Seen at once; many sessions' flag updates share one transaction.
        self.seen: GroupCommit[tuple[int, int], None] = GroupCommit(self, self._mark_seen)
        # LMTP group commit: concurrent deliveries share one transaction and fsync; each
        # sender still gets its reply only once its message is durable.
        self.delivery: GroupCommit[Prepared, list[Result]] = GroupCommit(
            self, self.deliverer.commit, max_batch=64
        )
        self.penalty = Penalty(
            PenaltyPolicy(base=config.pop3.auth_delay, maximum=config.pop3.auth_delay_max)
        )
        self.sasl_config = sasl.SaslConfig(
            hostname=config.server.hostname, fake_salt_key=self._fake_salt_key()
        )
        self.proxy_from = tuple(
            ipaddress.ip_network(n, strict=False) for n in config.pop3.proxy_from
        )
        # [tls] and [[tls.certificates]] (SNI); ConfigError names a bad file and its key.
        self.tls: ReloadableContext | None = tlsconf.from_config(config)
        # systemd notifications (sends nothing until serve_forever is ready; no-op unset).
        self.notifier = sdnotify.Notifier()
        self.submitter: Submitter | None = None
        self.lmtp_sessions: set[Any] = set()
        # The XTND XMIT service (xtnd/service.py) with its relay worker, when enabled.
        self.submission: Any = None
        self.servers: list[asyncio.Server] = []
        self.bound: dict[str, list[tuple[str, int]]] = {"pop3": [], "pop3s": [], "lmtp": []}
        self._ids = itertools.count(1)
        self._stopping = asyncio.Event()
        self._collect_wanted = False

    def _mark_seen(self, items: list[tuple[int, int]]) -> list[None]:
        """\\Seen is advisory: a failed batch is logged, never an error for the RETR."""
        try:
            self.store.mark_seen(items)
        except Exception:
            log.exception("could not set \\Seen on %d messages", len(items))
        return [None] * len(items)

    async def deliver(self, sender: str, recipients: Sequence[str], message: bytes) -> list[Result]:
        """LMTP delivery: recipients resolved in a reader thread, then the group commit."""
        prepared = await self.read(self.deliverer.prepare, sender, recipients, message)
        if not prepared.copies:
            return prepared.refused()
        return await self.delivery.submit(prepared)

    def _fake_salt_key(self) -> bytes:
        """The configured key, else one kept in the data directory, made (0600) on first start:
        a per-process key would change the fake salt of unknown names at each restart."""
        configured = self.config.pop3.sasl_fake_salt_key
        if configured:
            return configured.encode("utf-8")
        path = self.config.server.data_dir / FAKE_SALT_KEY_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_bytes()
            if len(key) < 16:
                raise OSError(
                    f"{path}: too short to be a key; delete it to make a new one"
                ) from None
            return key
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
        return key

    def proxied(self, peer_ip: str) -> bool:
        """True when `peer_ip` is a trusted proxy that must send a PROXY header."""
        ip = peer_address(peer_ip)
        return ip is not None and any(ip in net for net in self.proxy_from)

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
        for ep in self.config.lmtp.listen:
            server = await start_lmtp(self, ep)
            self._register("lmtp", server)
        if self.config.xtnd.enabled:
            from xtnd.service import start_submission

            self.submission = await start_submission(self)
        # Kept referenced: the loop holds tasks only weakly.
        self._sweeper_task = asyncio.get_running_loop().create_task(self._sweeper())

    def _register(self, kind: str, server: asyncio.Server) -> None:
        self.servers.append(server)
        for sock in server.sockets:
            addr = sock.getsockname()
            self.bound[kind].append((addr[0], addr[1]))
            log.info("%s listening on %s:%d", kind.upper(), addr[0], addr[1])

    async def _listen(self, kind: str, ep: Endpoint, handler: Callable[..., Any]) -> None:
        try:
            server = await asyncio.start_server(
                handler, ep.host, ep.port, reuse_address=True, limit=READ_SIZE, backlog=1024
            )
        except OSError as exc:
            raise OSError(f"cannot listen on {ep} for {kind}: {exc.strerror}") from None
        self._register(kind, server)

    async def stop(self) -> None:
        """Close listeners, give sessions `shutdown_grace` seconds, then cancel the rest."""
        self._stopping.set()
        for server in self.servers:
            server.close()
        end_sessions(self)
        # Sessions waiting for input are closed now (without QUIT nothing is expunged); busy
        # ones get `shutdown_grace` seconds to finish their command, then their connection is
        # aborted. Tasks are not cancelled: asyncio 3.11 streams log a traceback for that.
        for conn in list(self.state.connections):
            if conn.idle:
                with contextlib.suppress(Exception):
                    conn.writer.write(SHUTTING_DOWN)
                    conn.writer.close()
        tasks = set(self.state.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.server.shutdown_grace)
            for conn in list(self.state.connections):
                conn.writer.transport.abort()
            if pending:
                _, pending = await asyncio.wait(pending, timeout=5)
            for task in pending:
                task.cancel()
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
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.start()
        # systemd: every listener is open (READY=1); the watchdog pings while the loop runs.
        self.notifier.ready()
        self.notifier.start_watchdog()
        await self._stopping.wait()
        log.info("shutting down")
        self.notifier.stopping()
        await self.stop()
        self.notifier.close()

    def reload(self) -> None:
        """SIGHUP: re-read the configuration and certificates (cgpop/reload.py); new limits,
        log level and certificates apply to what comes next, open sessions stay."""
        self.notifier.reloading()
        try:
            self.config = reload_config(self.config, tls=self.tls, penalty=self.penalty)
        except Exception:
            log.exception("reload failed; the running configuration stays")
        self.notifier.reloaded()

    def reload_tls(self) -> None:
        """Re-read the certificate files only (SIGHUP does this and more: `reload`);
        sessions already in TLS keep theirs."""
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
        next_prune = 0.0
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
            if now >= next_prune:
                # Duplicate-suppression records older than the window are of no more use.
                next_prune = now + PRUNE_INTERVAL
                with contextlib.suppress(Exception):
                    await self.write(self.store.prune_duplicates)

    # --- POP3 connections ---
    def _pop3_handler(self, ep: Endpoint, *, tls: bool) -> Callable[..., Any]:
        domain = self.config.pop3.listener_domains.get(str(ep), self.config.server.default_domain)

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.state.tasks.add(task)
            try:
                await self._pop3(reader, writer, domain, tls)
            except asyncio.CancelledError:
                pass  # last resort of stop(); the connection is already gone
            finally:
                self.state.tasks.discard(task)

        return handler

    def policy(self, *, tls: bool, peer_ip: str) -> Policy:
        c = self.config
        ip = peer_address(peer_ip)
        secure = tls or (ip is not None and ip.is_loopback)
        always = c.pop3.plaintext_auth == "always"
        return Policy(
            hostname=c.server.hostname,
            apop_banner=make_apop_banner(c.server.hostname) if c.pop3.apop else "",
            plaintext_allowed=secure or always,
            stls_available=self.tls is not None,
            tls_active=tls,
            sasl_mechanisms=tuple(
                m
                for m in sasl.available(secure, always)
                if c.pop3.cram_md5 or m != sasl.CramMd5.name
            ),
            xtnd_enabled=c.xtnd.enabled and self.submitter is not None,
            xtnd_max_size=c.xtnd.max_message_size,
            max_bad_commands=c.pop3.max_bad_commands,
            max_auth_failures=c.pop3.max_auth_failures,
            sasl_config=self.sasl_config,
        )

    async def _pop3(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, domain: str, tls: bool
    ) -> None:
        peername = writer.get_extra_info("peername") or ("?", 0)
        peer_ip, peer_port = str(peername[0]), int(peername[1])
        conn = Connection(f"{os.getpid():x}-{next(self._ids)}", f"{peer_ip}:{peer_port}", writer)
        slog = SessionLog(log, "POP", conn.id, conn.peer)
        st = self.state
        cfg = self.config.pop3
        # Checked before anything is read, so a flood costs no more than an accept.
        if len(st.connections) >= cfg.max_channels:
            await self._refuse(reader, writer, tls, slog, "channel limit reached")
            return
        st.connections.add(conn)
        counted_ip: str | None = None
        session: Session | None = None
        try:
            if self.proxied(peer_ip):
                source = await self._proxy_header(reader, writer, slog)
                if source is None:
                    return
                if source != (peer_ip, peer_port):
                    slog.info("proxied for %s:%d", source[0], source[1])
                    peer_ip, peer_port = source
                    conn.peer = f"{peer_ip}:{peer_port}"
                    slog = SessionLog(log, "POP", conn.id, conn.peer)
            if st.per_ip.get(peer_ip, 0) >= cfg.max_per_ip:
                await self._refuse(reader, writer, tls, slog, "per-address limit reached")
                return
            st.per_ip[peer_ip] = st.per_ip.get(peer_ip, 0) + 1
            counted_ip = peer_ip
            slog.info("connected")
            session = Session(self.policy(tls=tls, peer_ip=peer_ip))
            lines = LineBuffer(cfg.max_line)
            runner = _Runner(self, session, conn, reader, writer, slog, domain, lines, peer_ip)
            if tls:
                # Implicit TLS (RFC 8314): handshake first, with the current certificate. Bytes
                # already read past a PROXY header are the start of the handshake.
                assert self.tls is not None
                await start_tls(reader, writer, self.tls.context, carry=True)
                # SNI: a matching [[tls.certificates]] entry's domain for bare login names.
                runner.domain = self.tls.session_domain(writer.get_extra_info("ssl_object"), domain)
            await runner.run_events(session.greeting())
            await runner.flush()
            # Formatting a trace line per command costs even when DEBUG is off: decide once.
            tracing = slog.isEnabledFor(logging.DEBUG)
            while not session.closed:
                conn.idle = True
                data = await reader.read(READ_SIZE)
                conn.idle = False
                if not data or self._stopping.is_set():
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
                        if tracing:
                            trace_command(slog, session, line)
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
            if counted_ip is not None:
                st.per_ip[counted_ip] -= 1
                if not st.per_ip[counted_ip]:
                    del st.per_ip[counted_ip]
            if conn.account:
                st.per_account[conn.account] -= 1
                if not st.per_account[conn.account]:
                    del st.per_account[conn.account]
            if session is not None and session.grant is not None:
                self.store.close_maildrop(session.grant.snapshot)
                self._collect_wanted = True
            with contextlib.suppress(Exception):
                writer.close()
            if counted_ip is not None:
                slog.info("disconnected")

    async def _refuse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tls: bool,
        slog: SessionLog,
        why: str,
    ) -> None:
        """Past a connection limit: `-ERR [SYS/TEMP] ... try later` and close at once. On an
        implicit-TLS listener the reply is sent in TLS, bounded by a short handshake timeout."""
        slog.warning("refused: %s", why)
        with contextlib.suppress(Exception):
            if tls:
                assert self.tls is not None
                await asyncio.wait_for(
                    start_tls(reader, writer, self.tls.context, carry=True), PROXY_TIMEOUT
                )
            writer.write(TOO_MANY)
            await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    async def _proxy_header(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slog: SessionLog
    ) -> tuple[str, int] | None:
        """Read the PROXY header a trusted peer must send first; the real client's address and
        port (the socket's own peer for LOCAL/UNKNOWN), or None after refusing the connection."""
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
        if result.source is None:
            peername = writer.get_extra_info("peername") or ("?", 0)
            return str(peername[0]), int(peername[1])
        return result.source


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


def trace_command(slog: SessionLog, session: Session, line: bytes) -> None:
    """DEBUG trace of a client line; SASL responses and PASS/APOP/AUTH data never logged."""
    if session.in_sasl:
        slog.debug("C: <SASL response>")
    elif not session.in_body:
        slog.debug("C: %s", redact(line.decode("utf-8", "replace").rstrip()))


class _Runner:
    """Carries out one session's events, in order, with batched writes."""

    def __init__(
        self,
        gw: Gateway,
        session: Session,
        conn: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        slog: SessionLog,
        domain: str,
        lines: LineBuffer,
        peer_ip: str,
    ) -> None:
        self.gw, self.session, self.conn, self.writer = gw, session, conn, writer
        self.reader, self.lines, self.peer_ip = reader, lines, peer_ip
        self.slog, self.domain = slog, domain
        self.out: list[bytes] = []
        self.out_size = 0
        self.window: dict[int, StoredMessage] = {}

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
                creds, good = await self.gw.read(
                    self.gw.auth.sasl_credentials, event.authcid, self.domain, event.password
                )
                await self.run_events(self.session.sasl_credentials(creds, good))
            elif isinstance(event, FailedLogin):
                await self.run_events(
                    self.session.login_result(await self.admit(event.outcome, event.login))
                )
            elif isinstance(event, SaslLogin):
                outcome = await self.sasl_login(event)
                await self.run_events(
                    self.session.login_result(
                        await self.admit(outcome, event.proven_by or event.login)
                    )
                )
            elif isinstance(event, Submit):
                await self.run_events(self.session.submit_result(await self.submit(event)))

    async def start_tls(self, event: StartTls) -> None:
        """RFC 2595 section 4: reply, drop everything the client pipelined after STLS (no
        plaintext command injection), handshake, and restart the session's view."""
        self.send(event.reply)
        await self.flush()
        # Lines already read behind STLS, and bytes still in the stream's buffer, were sent in
        # cleartext: they must not be read as if they came through TLS.
        self.lines.discard()
        assert self.gw.tls is not None
        await start_tls(self.reader, self.writer, self.gw.tls.context, carry=False)
        # SNI: a matching [[tls.certificates]] entry's domain for bare login names.
        ssl_object = self.writer.get_extra_info("ssl_object")
        self.domain = self.gw.tls.session_domain(ssl_object, self.domain)
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
        return await gw.submitter.submit(
            self.conn.account, self.conn.peer, event.message, event.login_address
        )

    async def login(self, event: PasswordLogin) -> LoginOutcome:
        gw = self.gw
        outcome = await gw.read(
            lambda: gw.auth.password_login(
                event.login,
                self.domain,
                password=event.password,
                apop_digest=event.apop_digest,
                apop_banner=self.session.policy.apop_banner,
            )
        )
        return await self.admit(outcome, event.login)

    async def admit(self, outcome: LoginOutcome, login: str) -> LoginOutcome:
        """Apply the failed-login delay and the per-account cap to a login's outcome."""
        gw = self.gw
        key = login.lower()[:320]  # the penalty's per-account key, bounded
        if outcome.grant is None:
            self.slog.info("login failed for %r", login[:100])
            if outcome.counts_as_failure:
                gw.penalty.record_failure(self.peer_ip, key)
                # A growing delay per peer and per account slows guessing; the reply is the
                # same whatever failed.
                await asyncio.sleep(gw.penalty.delay_for(self.peer_ip, key))
            return outcome
        gw.penalty.record_success(self.peer_ip, key)
        account = outcome.grant.account
        # CommuniGate alerts: correct credentials with an alert pending fail the login, showing
        # the alert (SYS/TEMP, not AUTH, so clients show it instead of asking for a password).
        if outcome.grant.alert_pending:
            alert = await gw.write(alerts.take, gw.store, account)
            if alert is not None:
                gw.store.close_maildrop(outcome.grant.snapshot)
                self.slog.info("login %s: alert %d delivered", account, alert.id)
                return LoginOutcome(
                    error=Pop3Error(alert.text, "SYS/TEMP"), counts_as_failure=False
                )
        per_account = gw.state.per_account
        if per_account.get(account, 0) >= gw.config.pop3.max_per_account:
            gw.store.close_maildrop(outcome.grant.snapshot)
            self.slog.warning("login %s refused: per-account session limit", account)
            return LoginOutcome(
                error=Pop3Error("too many sessions for this account, try later", "SYS/TEMP"),
                counts_as_failure=False,
            )
        per_account[account] = per_account.get(account, 0) + 1
        self.conn.account = account
        snap = outcome.grant.snapshot
        self.slog.info("login %s mailbox %s (%d messages)", account, snap.mailbox.name, len(snap))
        return outcome

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
        self.window = await self.gw.read(self.gw.store.read_messages, snap, indexes)
        return self.window.pop(index, None)

    async def send_message(self, event: SendMessage) -> None:
        gw = self.gw
        snap = self.session.snapshot
        stored = await self.fetch(event.index)
        if stored is None:
            self.send(Pop3Error("message is no longer available", "SYS/TEMP").reply())
            return
        if stored.data is not None:
            self.send(event.status)
            if event.lines is None:
                self.send(stored.prefix)
                self.send(stored.data)
            else:
                for part in top_lines((stored.prefix, stored.data), event.lines):
                    self.send(part)
        elif not await self.stream_body(stored, event):
            return
        self.send(TERMINATOR)
        if event.mark_seen:
            gw.seen.submit((snap.mailbox.id, snap.uids[event.index]))

    async def stream_body(self, stored: StoredMessage, event: SendMessage) -> bool:
        """Send the status line and a large body in bounded chunks read off the event loop.
        The file is opened (first chunk) before the status line, so a missing body is a
        clean -ERR and the session goes on (False)."""
        snap = self.session.snapshot
        source = stored.chunks()
        try:
            try:
                first = await self.gw.read(next, source, None)
            except OSError as exc:
                self.slog.error(
                    "body of message uid %d in mailbox %d unreadable: %s",
                    snap.uids[event.index],
                    snap.mailbox.id,
                    exc,
                )
                self.send(BODY_MISSING)
                return False
            self.send(event.status)
            await self.flush()
            rest = itertools.chain(() if first is None else (first,), source)
            chunks = rest if event.lines is None else top_lines(rest, event.lines)
            while True:
                try:
                    part = await self.gw.read(next, chunks, None)
                except OSError as exc:
                    # Inside a multi-line reply only its octets may follow: end the
                    # connection rather than put an -ERR in the middle of the message.
                    self.slog.error("body read failed mid-message: %s", exc)
                    self.writer.transport.abort()
                    raise ConnectionResetError("body read failed") from exc
                if part is None:
                    return True
                self.writer.write(part)
                await self.writer.drain()
        finally:
            source.close()  # the body file, also when the client went away mid-message

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
