"""The composition root of `cgpop serve`: reads the config, opens the store, builds the
services, starts the listeners, and handles signals and shutdown. It only wires; each part
gets the few things it uses. Only the CLI imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from cgpop import sasl, sdnotify, tlsconf
from cgpop.auth import Authenticator
from cgpop.blocking import StoreWorkers
from cgpop.config import Config, Endpoint
from cgpop.delivery import Deliverer, Job, Prepared, Result, Status
from cgpop.errors import Pop3Error
from cgpop.groupcommit import GroupCommit, advisory
from cgpop.livesessions import LiveRegistry
from cgpop.lmtp import LmtpListeners
from cgpop.login import LoginPolicy, SessionCaps
from cgpop.metrics_http import MetricsEndpoint, gateway_scrape, store_health
from cgpop.penalty import Penalty, PenaltyPolicy
from cgpop.pop3conn import READ_SIZE, Handler, Pop3Connections, ServerState, session_policy
from cgpop.prefork import Role, listen_key
from cgpop.rcptcache import AcceptedRecipients
from cgpop.reload import reload_config
from cgpop.runner import SEEN_LINGER, Services, SubmitFn
from cgpop.saltkey import fake_salt_key
from cgpop.spool import Octets
from cgpop.store.factory import open_store
from cgpop.sweeper import Sweeper
from cgpop.telemetry import TelemetryWriter
from cgpop.tlsconf import ReloadableContext

if TYPE_CHECKING:
    from xtnd.service import SubmissionService

log = logging.getLogger("cgpop")


class Gateway:
    """Everything `cgpop serve` runs: the store, the POP3 and LMTP listeners, XTND XMIT."""

    def __init__(self, config: Config, role: Role | None = None) -> None:
        self.config = config
        # One process, or one worker of several (cgpop/prefork.py: shared counts and holds).
        self.role = role = Role() if role is None else role
        self.store = open_store(config, holds=role.holds)
        # Node-local files (fake-salt key, spooled bodies): the embedded store makes data_dir,
        # a database backend does not, and no other node needs what is kept there.
        config.server.data_dir.mkdir(parents=True, exist_ok=True)
        self.state = ServerState()
        self.metrics = role.make_metrics(lambda: len(self.state.connections))
        self.workers = StoreWorkers(observe=self.metrics.observe_store)
        self.auth = Authenticator(
            self.store, admins=config.server.admins, login_cache_ttl=config.server.login_cache_ttl
        )
        self.deliverer = Deliverer(
            self.store,
            default_domain=config.server.default_domain,
            real_to_header=config.pop3.real_to_header,
            quota=config.quota,
        )
        # RETR sets \\Seen within SEEN_LINGER (and at once when its session ends); many
        # sessions' flag updates share one transaction.
        self.seen: GroupCommit[tuple[int, int], None] = GroupCommit(
            lambda items: self.workers.write(advisory(self.store.mark_seen, r"\Seen"), items),
            linger=SEEN_LINGER,
        )
        # LMTP group commit: concurrent deliveries share one transaction and fsync; each
        # sender still gets its reply only once its message is durable. Recipients are
        # resolved in the same writer-thread hop (Deliverer.commit).
        self.delivery: GroupCommit[Prepared | Job, list[Result]] = GroupCommit(
            lambda batch: self.workers.write(self.deliverer.commit, batch),
            max_batch=64,
        )
        # LMTP RCPT: recent acceptances reused (DATA resolves every recipient again).
        self.accepted = AcceptedRecipients(lambda r: self.workers.read(self.deliverer.check, r))
        self.caps = SessionCaps(
            config.pop3.max_per_ip, config.pop3.max_per_account, counts=role.counts
        )
        penalty = Penalty(
            PenaltyPolicy(base=config.pop3.auth_delay, maximum=config.pop3.auth_delay_max),
            book=role.penalties,
        )
        self.login = LoginPolicy(
            self.auth,
            read=self.workers.read,
            write=self.workers.write,
            take_alert=self.store.take_alert,
            close_maildrop=self.store.close_maildrop,
            penalty=penalty,
            caps=self.caps,
            count_login=self.metrics.count_login,
        )
        self.sasl_config = sasl.SaslConfig(
            hostname=config.server.hostname, fake_salt_key=fake_salt_key(config)
        )
        # [tls] and [[tls.certificates]] (SNI); ConfigError names a bad file and its key.
        self.tls: ReloadableContext | None = tlsconf.from_config(config)
        # systemd notifications (sends nothing until serve_forever is ready; no-op unset).
        self.notifier = sdnotify.Notifier()
        self.lmtp = LmtpListeners(
            config.lmtp,
            config.server.hostname,
            config.server.data_dir,
            self.check_recipient,
            functools.partial(self.deliver, checked=True),
            count_recipient=self.metrics.count_recipient,
            count_refused=self.metrics.pop3.refused,
        )
        # The XTND XMIT service (xtnd/service.py) with its relay worker, when enabled.
        self.submission: SubmissionService | None = None
        self.pop3: Pop3Connections | None = None
        self.servers: list[asyncio.Server] = []
        kinds = ("pop3", "pop3s", "lmtp", "metrics")
        self.bound: dict[str, list[tuple[str, int]]] = {kind: [] for kind in kinds}
        self._stopping = asyncio.Event()
        # Issue 12, section 3: this process's sessions in the store's registry; transcripts.
        node = config.store.node_name()
        self.live = LiveRegistry(self.store, self.workers.read, self.workers.write, node)
        self.telemetry = TelemetryWriter(config.server.data_dir / "telemetry")
        self.sweeper = Sweeper(
            self.state,
            config.pop3.idle_timeout,
            self.workers.write,
            self.store.collect,
            self.store.prune_duplicates,
            self.live.sweep,
        )

    async def check_recipient(self, recipient: str) -> Status | None:
        return await self.accepted.check(recipient)

    async def deliver(
        self, sender: str, recipients: Sequence[str], message: Octets, checked: bool = False
    ) -> list[Result]:
        """Local delivery: recipients resolved (`checked`: as LMTP RCPT just saw them) and the
        message stored by the group commit."""
        return await self.delivery.submit((sender, tuple(recipients), message, checked))

    def services(self) -> Services:
        count = self.metrics.count_submission
        submit = None if self.submission is None else _submit_fn(self.submission, count)
        return Services(
            login=self.login,
            read=self.workers.read,
            write=self.workers.write,
            read_messages=self.store.read_messages,
            expunge=self.store.expunge,
            mark_seen=self.seen.add,
            seen_now=self.seen.hurry,
            submit=submit,
            collect_soon=self.sweeper.collect_soon,
            tls=self.tls,
            policy=session_policy(
                self.config, self.sasl_config, stls=self.tls is not None, xtnd=submit is not None
            ),
            live=self.live,
            telemetry=self.telemetry,
            meter=self.metrics.pop3,
        )

    # --- lifecycle ---
    async def start(self) -> None:
        await self.workers.write(self.store.remove_orphan_files)
        await self.workers.write(self.store.collect)
        if self.config.xtnd.enabled:
            from xtnd.service import start_submission

            self.submission = start_submission(
                self.config,
                store=self.store,
                deliverer=self.deliverer,
                deliver_prepared=self.delivery.submit,
                deliver=self.deliver,
                read=self.workers.read,
                write=self.workers.write,
                relay=self.role.relay,
            )
        self.pop3 = pop3 = Pop3Connections(
            self.config, self.services(), self.state, self.caps, self._stopping
        )
        domains = self.config.pop3.listener_domains
        for kind, endpoints in (
            ("pop3", self.config.pop3.listen),
            ("pop3s", self.config.pop3.tls_listen),
        ):
            for ep in endpoints:
                domain = domains.get(str(ep), self.config.server.default_domain)
                await self._listen(kind, ep, pop3.handler(domain, tls=kind == "pop3s"))
        for where in self.config.lmtp.listen:
            for sock in self.role.sockets.get(listen_key("lmtp", where), [None]):
                self._register("lmtp", await self.lmtp.start(where, sock))
        if (mep := self.config.metrics.listen) is not None and self.role.serves_metrics:
            endpoint = MetricsEndpoint(
                gateway_scrape(self.metrics, self.workers.read, self.store.queue_stats),
                store_health(self.workers.read, self.store.directory_version),
            )
            for sock in self.role.sockets.get(listen_key("metrics", mep), [None]):
                self._register("metrics", await endpoint.start(mep, sock))
        # Kept referenced: the loop holds tasks only weakly.
        loop = asyncio.get_running_loop()
        self._sweeper_task = loop.create_task(self.sweeper.run(self._stopping))
        self._live_task = loop.create_task(self.live.run(self._stopping))

    def _register(self, kind: str, server: asyncio.Server) -> None:
        self.servers.append(server)
        for sock in server.sockets:
            addr = sock.getsockname()
            if isinstance(addr, str):  # a unix socket: its path
                log.info("%s listening on unix:%s", kind.upper(), addr)
                continue
            self.bound[kind].append((addr[0], addr[1]))
            log.info("%s listening on %s:%d", kind.upper(), addr[0], addr[1])

    async def _listen(self, kind: str, ep: Endpoint, handler: Handler) -> None:
        for sock in self.role.sockets.get(listen_key(kind, ep), []):  # opened by the parent
            self._register(kind, await asyncio.start_server(handler, sock=sock, limit=READ_SIZE))
        if self.role.sockets:
            return
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
        self.lmtp.remove_sockets()
        self.lmtp.end_sessions()
        await self.state.drain(self.config.server.shutdown_grace)
        await self.seen.drain()
        await self.live.flush(progress=False)  # the rows of the sessions just closed
        self.telemetry.shutdown()
        if self.submission is not None:
            await self.submission.stop()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        await self.workers.write(self.store.collect)
        self.workers.shutdown()
        self.store.close()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.start()
        # systemd: every listener is open (READY=1); the watchdog pings while the loop runs.
        self.notifier.ready()
        self.role.ready()
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
            self.config = reload_config(self.config, tls=self.tls, penalty=self.login.penalty)
            self.caps.set_limits(self.config.pop3.max_per_ip, self.config.pop3.max_per_account)
            self.deliverer.quota = self.config.quota
            if self.pop3 is not None:
                self.pop3.reconfigure(self.config)
        except Exception:
            log.exception("reload failed; the running configuration stays")
        self.notifier.reloaded()


def _submit_fn(service: SubmissionService, count: Callable[[str], None]) -> SubmitFn:
    """XTND XMIT for the session runner: xtnd's refusals become the engine's replies."""
    from xtnd.submit import SubmissionError

    async def submit(account: str, peer: str, message: Octets, login: str) -> Pop3Error | None:
        try:
            await service.submitter.submit(account, peer, message, login)
        except SubmissionError as exc:
            count("tempfail" if exc.temporary else "refused")
            return Pop3Error(exc.text, "SYS/TEMP" if exc.temporary else None)
        count("accepted")
        return None

    return submit
