"""POP3 connections from accept to close: the connection limits, the PROXY header of a trusted
proxy, implicit TLS, then the session's read loop feeding the engine (cgpop/pop3/) and its
runner (cgpop/runner.py). One task per connection (STYLE rule 8)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cgpop import sasl, streams
from cgpop.config import Config
from cgpop.errors import Pop3Error
from cgpop.linedeadline import LineDeadline
from cgpop.login import SessionCaps
from cgpop.logs import SessionLog, redact
from cgpop.pop3.lines import NEED_MORE, LineBuffer
from cgpop.pop3.session import Policy, Session
from cgpop.runner import Peer, Services, SessionRunner
from cgpop.sasl.apop import make_apop_banner
from cgpop.telemetry import Transcript

log = logging.getLogger("cgpop")

READ_SIZE = 64 * 1024
INTERNAL_ERROR = Pop3Error("internal server error", "SYS/TEMP").reply()
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

SHUTTING_DOWN = Pop3Error("server shutting down", "SYS/TEMP").reply()


@dataclass(eq=False)
class Connection:
    id: str
    peer: str
    writer: asyncio.StreamWriter
    last_active: float = field(default_factory=time.monotonic)
    # True while waiting for the client's next input: nothing half-done, safe to close.
    idle: bool = True


class ServerState:
    """Open connections and their tasks, for the channel limit, the idle sweeper and shutdown."""

    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def drain(self, grace: float) -> None:
        """Shutdown: sessions waiting for input are closed now (without QUIT nothing is
        expunged); busy ones get `grace` seconds to finish their command, then their
        connection is aborted. Tasks are not cancelled: asyncio 3.11 streams log a traceback
        for that."""
        for conn in list(self.connections):
            if conn.idle:
                with contextlib.suppress(Exception):
                    conn.writer.write(SHUTTING_DOWN)
                    conn.writer.close()
        tasks = set(self.tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for conn in list(self.connections):
            conn.writer.transport.abort()
        if pending:
            _, pending = await asyncio.wait(pending, timeout=5)
        for task in pending:
            task.cancel()


def session_policy(
    config: Config, sasl_config: sasl.SaslConfig, *, stls: bool, xtnd: bool
) -> Callable[[bool, str], Policy]:
    """(TLS active, peer address) -> what the session allows. Without APOP (whose banner is
    per connection) the Policy depends only on (TLS, secure): built once for each and shared,
    not rebuilt per connection."""
    c = config
    built: dict[tuple[bool, bool], Policy] = {}

    def build(tls: bool, secure: bool) -> Policy:
        always = c.pop3.plaintext_auth == "always"
        return Policy(
            hostname=c.server.hostname,
            apop_banner=make_apop_banner(c.server.hostname) if c.pop3.apop else "",
            plaintext_allowed=secure or always,
            stls_available=stls,
            tls_active=tls,
            sasl_mechanisms=tuple(
                m
                for m in sasl.available(secure, always)
                if c.pop3.cram_md5 or m != sasl.CramMd5.name
            ),
            xtnd_enabled=xtnd,
            xtnd_max_size=c.xtnd.max_message_size,
            spool_dir=c.server.data_dir,
            max_bad_commands=c.pop3.max_bad_commands,
            max_auth_failures=c.pop3.max_auth_failures,
            sasl_config=sasl_config,
        )

    def policy(tls: bool, peer_ip: str) -> Policy:
        ip = streams.peer_address(peer_ip)
        secure = tls or (ip is not None and ip.is_loopback)
        if c.pop3.apop:
            return build(tls, secure)
        found = built.get((tls, secure))
        if found is None:
            found = built[(tls, secure)] = build(tls, secure)
        return found

    return policy


def trace_command(slog: SessionLog, session: Session, line: bytes) -> None:
    """DEBUG trace of a client line; SASL responses and PASS/APOP/AUTH data never logged."""
    if session.in_sasl:
        slog.debug("C: <SASL response>")
    elif not session.in_body:
        slog.debug("C: %s", redact(line.decode("utf-8", "replace").rstrip()))


class Pop3Connections:
    """Serves the connections of the POP3 listeners."""

    def __init__(
        self,
        config: Config,
        services: Services,
        state: ServerState,
        caps: SessionCaps,
        stopping: asyncio.Event,
    ) -> None:
        self.config, self.services, self.state = config, services, state
        self.caps, self.stopping = caps, stopping
        self.proxy_from = tuple(
            ipaddress.ip_network(n, strict=False) for n in config.pop3.proxy_from
        )
        self._ids = itertools.count(1)
        # Session ids are unique across processes and nodes (the live-session registry, issue
        # 12): the pid and a random token of this process, then a counter.
        self._id_prefix = f"{os.getpid():x}{secrets.token_hex(4)}"

    def reconfigure(self, config: Config) -> None:
        """A reload: new connections see `config` (its limits); open sessions stay."""
        self.config = config

    def proxied(self, peer_ip: str) -> bool:
        """True when `peer_ip` is a trusted proxy that must send a PROXY header."""
        ip = streams.peer_address(peer_ip)
        return ip is not None and any(ip in net for net in self.proxy_from)

    def handler(self, domain: str, *, tls: bool) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self.state.tasks.add(task)
            try:
                await self.serve(reader, writer, domain, tls)
            except asyncio.CancelledError:
                pass  # last resort of stop(); the connection is already gone
            finally:
                self.state.tasks.discard(task)

        return handler

    def _tls_context(self, tls: bool) -> ssl.SSLContext | None:
        if not tls:
            return None
        assert self.services.tls is not None
        return self.services.tls.context

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, domain: str, tls: bool
    ) -> None:
        peername = writer.get_extra_info("peername") or ("?", 0)
        peer_ip, peer_port = str(peername[0]), int(peername[1])
        conn = Connection(f"{self._id_prefix}-{next(self._ids)}", f"{peer_ip}:{peer_port}", writer)
        slog = SessionLog(log, "POP", conn.id, conn.peer)
        st = self.state
        cfg = self.config.pop3
        # Checked before anything is read, so a flood costs no more than an accept.
        if not self.caps.enter_channel(cfg.max_channels):
            self.services.meter.refused("max_channels")
            await streams.refuse(
                reader, writer, self._tls_context(tls), slog, "channel limit reached"
            )
            return
        st.connections.add(conn)
        counted_ip: str | None = None
        runner: SessionRunner | None = None
        try:
            if self.proxied(peer_ip):
                source = await streams.proxy_source(reader, writer, slog)
                if source is None:
                    self.services.meter.refused("proxy_header")
                    return
                if source != (peer_ip, peer_port):
                    slog.info("proxied for %s:%d", source[0], source[1])
                    peer_ip, peer_port = source
                    conn.peer = f"{peer_ip}:{peer_port}"
                    slog = SessionLog(log, "POP", conn.id, conn.peer)
            if not self.caps.enter_peer(peer_ip):
                self.services.meter.refused("max_per_ip")
                await streams.refuse(
                    reader, writer, self._tls_context(tls), slog, "per-address limit reached"
                )
                return
            counted_ip = peer_ip
            slog.info("connected")
            session = Session(self.services.policy(tls, peer_ip))
            lines = LineBuffer(cfg.max_line)
            deadline = LineDeadline(cfg.line_timeout)
            peer = Peer(peer_ip, conn.peer, domain, session_id=conn.id)
            runner = SessionRunner(self.services, session, peer, reader, writer, lines, slog)
            runner.idle = lambda: conn.idle
            live = self.services.live
            if live is not None and live.telemetry:
                # Some account is traced: keep this session's lines until its login shows
                # whether it is one of them (cgpop/telemetry.py).
                runner.transcript = Transcript(datetime.fromtimestamp(peer.since, UTC))
            context = self._tls_context(tls)
            if context is not None:
                # Implicit TLS (RFC 8314): handshake first, with the current certificate. Bytes
                # already read past a PROXY header are the start of the handshake.
                # A handshake is bounded like a command line (slowloris, linedeadline.py).
                await self.services.meter.handshake(
                    asyncio.wait_for(
                        streams.start_tls(reader, writer, context, carry=True), cfg.line_timeout
                    )
                )
                assert self.services.tls is not None
                # SNI: a matching [[tls.certificates]] entry's domain for bare login names.
                peer.domain = self.services.tls.session_domain(
                    writer.get_extra_info("ssl_object"), domain
                )
            await runner.run_events(session.greeting())
            await runner.flush()
            # Formatting a trace line per command costs even when DEBUG is off: decide once.
            tracing = slog.isEnabledFor(logging.DEBUG)
            stats = self.services.meter.commands  # cgpop_pop3_command*: plain numbers, no locks
            clock = time.perf_counter
            while not session.closed:
                conn.idle = True
                data = await deadline.read(reader, READ_SIZE)
                conn.idle = False
                if not data or self.stopping.is_set() or runner.killed:
                    break
                conn.last_active = time.monotonic()
                lines.push(data)
                while not session.closed:
                    lines.body_mode = session.in_body
                    line = lines.pop()
                    if line == NEED_MORE:
                        break
                    # A command line, not a SASL response nor a line of an XTND XMIT body.
                    verb = (
                        -1
                        if line is None or session.in_body or session.in_sasl
                        else stats.verb(line)
                    )
                    start = clock()
                    if line is None:
                        slog.info("overlong command line")
                        events = session.handle_overlong()
                    else:
                        if tracing:
                            trace_command(slog, session, line)
                        if runner.transcript is not None and not session.in_body:
                            runner.transcript.client(line, session.in_sasl)
                        events = session.handle_line(line)
                    await runner.run_events(events)
                    if verb >= 0:
                        stats.observe(verb, clock() - start)
                    if runner.killed:
                        break
                await runner.flush()
                if runner.killed:
                    runner.send_killed()
                    break
                deadline.after_input(lines)
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
            self.caps.leave_channel()
            if counted_ip is not None:
                self.caps.leave_peer(counted_ip)
            if runner is not None:
                runner.logout()
            with contextlib.suppress(Exception):
                writer.close()
            if counted_ip is not None:
                slog.info("disconnected")
