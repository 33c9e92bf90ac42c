"""`cgpop serve` with `[server] workers` above 1 (issue 14): the parent opens every listener
(POP3, POP3S, LMTP) and the state the workers share, then forks the workers (cgpop/workers.py);
each worker runs the same composition root (cgpop/server.py) on the inherited sockets, with its
own event loop, store connections and threads. Nothing that holds a thread or a lock is created
before the fork: the store is opened in each worker.

What the workers share, and how:
- `max_channels`, `max_per_ip`, `max_per_account`: counted in shared memory over all workers
  (cgpop.shared.ServerCounters), so each cap holds for the whole server.
- The snapshot holds of the SQLite backend: each worker publishes its oldest open snapshot in
  shared memory (cgpop.shared.SnapshotHolds) and every collector honours the oldest of all, so a
  body stays readable by a session in another worker. PostgreSQL registers sessions in the
  database and needs nothing here.
- The failed-login penalty: its records (failures per address, per account and per pair, and
  each pair's next turn) in one fixed shared-memory table (cgpop.shared.SharedBook; its
  collision rule only ever makes the penalty stricter), so the turn of an (address, account)
  pair is one for the whole server and an address gets no more checks by reaching N workers.
- Alerts (taken once per account in one store transaction), the login cache's invalidation (the
  directory version in the store) and the XTND queue: in the store, as for separate processes.
  Only worker 0 runs the XTND relay queue (its start requeues the entries a dead relay left
  `sending`, which must not race another relay); every worker accepts XTND XMIT.
- `[metrics] listen`: the parent opens the listener; worker 0 serves /metrics and /healthz on
  it, summing every worker's figures (cgpop/metrics_workers.py: prometheus_client's
  multiprocess mode in a private directory the parent makes and removes, and the per-command
  numbers in shared memory).
- Only the parent talks to systemd: READY=1 once every worker serves (Supervisor.worker_ready),
  RELOADING=1/READY=1 around SIGHUP, STOPPING=1, and WATCHDOG=1 while every worker's event loop
  beats (cgpop.shared.Heartbeats; the rule is in cgpop/workers.py); the workers run without
  $NOTIFY_SOCKET.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cgpop.config import Config, Endpoint, UnixSocket
from cgpop.lmtp import SOCKET_MODE
from cgpop.login import Counts
from cgpop.metrics import Metrics
from cgpop.metrics_workers import MultiprocessDir, ServerCommandStats, worker_metrics
from cgpop.penalty import PenaltyBook
from cgpop.saltkey import fake_salt_key
from cgpop.sdnotify import Notifier
from cgpop.shared import Heartbeats, ServerCounters, SharedBook, SnapshotHolds
from cgpop.store.api import HoldBoard
from cgpop.store.factory import open_store
from cgpop.streams import UnixSocketFile
from cgpop.workers import Supervisor, worker_count

__all__ = ["Role", "listen_key", "open_listeners", "run_workers"]

log = logging.getLogger("cgpop.prefork")

# Same backlog as the single-process listeners (server.py): bursts of connects wait in the
# kernel rather than being refused.
BACKLOG = 1024
# Variables by which systemd addresses the service's main process only.
_PARENT_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def listen_key(kind: str, ep: Endpoint | UnixSocket) -> str:
    return f"{kind} {ep}"


@dataclass(frozen=True)
class Role:
    """What one process of the server is given: worker `index` of a supervised server, or the
    single process (the defaults: local counts, no shared holds, listeners opened by itself)."""

    index: int = 0
    counts: Counts | None = None
    holds: HoldBoard | None = None
    # listen_key(kind, endpoint) -> the sockets the parent opened for it
    sockets: Mapping[str, list[socket.socket]] = field(default_factory=dict)
    relay: bool = True  # runs the XTND relay queue
    penalties: PenaltyBook | None = None  # the failed-login records (None: this process's)
    ready: Callable[[], None] = lambda: None  # it serves now (told to the parent)
    # Its metrics, given the count of its own open sessions; and whether it serves /metrics.
    make_metrics: Callable[[Callable[[], int]], Metrics] = Metrics
    serves_metrics: bool = True


def _bind(ep: Endpoint, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for `ep`, one per address it resolves to (as asyncio.start_server);
    with `reuse_port`, SO_REUSEPORT, so that several sets can be bound to the same port."""
    infos = socket.getaddrinfo(
        ep.host or None, ep.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_each(ep: Endpoint, count: int) -> list[list[socket.socket]]:
    """`count` sets of listening sockets on `ep`'s port, one set per worker, bound with
    SO_REUSEPORT: the kernel spreads new connections evenly over them by their addresses
    (socket(7)). One socket shared by every worker is not even: whichever worker wakes first
    takes a burst, and a worker that reaches its open-files limit then refuses what others
    could serve. Port 0 is resolved by the first set; the others bind to that port."""
    first = _bind(ep, reuse_port=True)
    port = first[0].getsockname()[1] if ep.port == 0 else ep.port
    groups = [first]
    try:
        for _ in range(count - 1):
            groups.append(_bind(Endpoint(ep.host, port), reuse_port=True))
    except OSError:
        for group in groups:
            for sock in group:
                sock.close()
        raise
    return groups


def _distinct(opened: list[dict[str, list[socket.socket]]]) -> list[list[socket.socket]]:
    """Each socket group once (shared groups appear under every worker)."""
    seen: dict[int, list[socket.socket]] = {}
    for mine in opened:
        for group in mine.values():
            seen.setdefault(id(group), group)
    return list(seen.values())


def open_listeners(
    config: Config, unix_files: list[UnixSocketFile], workers: int = 1
) -> list[dict[str, list[socket.socket]]]:
    """Every listener of the configuration, opened once in the parent: per worker, its
    sockets by listen key. POP3, POP3S and LMTP over TCP get a set per worker (`_bind_each`);
    unix sockets and the metrics listener (served by worker 0) are one, shared. The unix socket
    files made are added to `unix_files`."""
    wanted = [
        *(("pop3", ep) for ep in config.pop3.listen),
        *(("pop3s", ep) for ep in config.pop3.tls_listen),
        *(("lmtp", ep) for ep in config.lmtp.listen),
        *(() if config.metrics.listen is None else [("metrics", config.metrics.listen)]),
    ]
    opened: list[dict[str, list[socket.socket]]] = [{} for _ in range(workers)]
    try:
        for kind, ep in wanted:
            key = listen_key(kind, ep)
            try:
                if isinstance(ep, UnixSocket):
                    # The parent owns the file: made here, removed when the server stops.
                    file = UnixSocketFile(ep.path, SOCKET_MODE)
                    file.sock.listen(BACKLOG)
                    unix_files.append(file)
                    groups = [[file.sock]] * workers
                elif kind == "metrics" or workers == 1:
                    groups = [_bind(ep)] * workers
                else:
                    groups = _bind_each(ep, workers)
            except OSError as exc:
                raise OSError(f"cannot listen on {ep} for {kind}: {exc.strerror}") from None
            for mine, group in zip(opened, groups, strict=True):
                mine[key] = group
    except OSError:
        for sockets in _distinct(opened):
            for sock in sockets:
                sock.close()
        raise
    return opened


# The heartbeat task of this worker, kept referenced (the loop holds tasks only weakly).
_beating: set[asyncio.Task[None]] = set()


def start_beating(beats: Heartbeats, index: int, interval: float) -> None:
    """In a worker, on its running event loop: beat every `interval` seconds while the loop
    runs (a loop stuck in a call stops beating; the parent then stops the watchdog pings)."""

    async def beat() -> None:
        while True:
            beats.beat(index, time.monotonic())
            await asyncio.sleep(interval)

    task = asyncio.get_running_loop().create_task(beat(), name="cgpop-heartbeat")
    _beating.add(task)
    task.add_done_callback(_beating.discard)


def run_workers(config: Config, serve: Callable[[Role], int]) -> int:
    """The parent: open the listeners and the shared state, fork `[server] workers` workers
    that each run `serve(role)`, supervise them until SIGTERM/SIGINT. The exit status."""
    count = worker_count(config.server.workers)
    # Schema migrations once, before the workers open the store (several at once would contend
    # for the schema); closed again, so no worker inherits a connection or a thread.
    open_store(config).close()
    fake_salt_key(config)  # made once here, not raced for by the workers' first starts
    unix_files: list[UnixSocketFile] = []
    sockets = open_listeners(config, unix_files, count)
    counters = ServerCounters(count)
    holds = SnapshotHolds(count)
    penalties = SharedBook()
    notifier = Notifier()
    beats = Heartbeats(count)
    # One /metrics for the server: set up before any worker makes a metric.
    metrics_dir = None if config.metrics.listen is None else MultiprocessDir()
    command_stats = ServerCommandStats(count)
    watchdog = notifier.watchdog if notifier.enabled else None
    supervisor: Supervisor

    def ready(index: int) -> None:
        supervisor.worker_ready(index)
        if watchdog is not None:
            start_beating(beats, index, watchdog)

    def work(index: int) -> int:
        for name in _PARENT_ONLY:
            os.environ.pop(name, None)
        mine = counters.for_worker(index)
        mine.reset()  # a replacement: its predecessor's connections went with it
        role = Role(
            index=index,
            counts=mine,
            holds=holds.slot(index),
            sockets=sockets[index],
            relay=index == 0,
            penalties=penalties,
            make_metrics=Metrics
            if metrics_dir is None
            else worker_metrics(
                command_stats, index, metrics_dir.path, lambda: counters.total("channels")
            ),
            serves_metrics=index == 0,
            ready=lambda: ready(index),
        )
        return serve(role)

    supervisor = Supervisor(
        count,
        work,
        grace=config.server.shutdown_grace,
        notify=notifier,
        watchdog=watchdog,
        beats=beats,
        reaped=(lambda pid: None) if metrics_dir is None else metrics_dir.process_dead,
    )
    log.info("starting %d workers", count)
    try:
        return supervisor.run()
    finally:
        notifier.close()
        for group in _distinct(sockets):
            for sock in group:
                with contextlib.suppress(OSError):
                    sock.close()
        for file in unix_files:
            file.remove()
        if metrics_dir is not None:
            metrics_dir.remove()
