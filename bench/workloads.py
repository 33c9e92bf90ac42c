"""The workloads of issue 6: each runs once against one server and returns a Run.

A Run holds figures (the numbers compared), the server's CPU time and memory from /proc, the
load generator's own CPU time (it shares the machine), and the error count: `valid` is False as
soon as one reply failed a check, and such a run is never reported as a figure.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench import loadgen, procstat
from bench.dataset import Dataset, message
from bench.loadgen import Tally, Transport
from bench.servers import RunningServer

# What one failed session can raise; each is counted, never fatal to the run.
SESSION_ERRORS = (loadgen.CheckFailed, loadgen.InUse, OSError, asyncio.IncompleteReadError)

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Scale:
    """How much work each workload does; QUICK is the one-minute smoke run."""

    reps: int = 3
    sessions: int = 2000
    clients: int = 50
    bigbox_iters: int = 20
    bigmsg_iters: int = 5
    idle_concurrency: int = 200  # logins in flight while opening idle sessions
    deliveries: int = 5000
    senders: int = 10
    tls_sessions: int = 1000  # per TLS flavour (implicit, STLS): TLS runs are the slowest
    filtered_iters: int = 20  # per login (filtered and unfiltered, interleaved)
    # Servers that get one repetition only (shown beside the ratio, not in it), to keep a full
    # run within about half an hour.
    single_rep: tuple[str, ...] = ("dovecot-default", "dovecot-hp-noauthcache", "cgpop-nocache")


FULL = Scale()
QUICK = Scale(
    reps=1,
    sessions=200,
    clients=50,
    bigbox_iters=5,
    bigmsg_iters=2,
    deliveries=300,
    tls_sessions=200,
    filtered_iters=5,
)
FULL_DATA = Dataset(seed=6)
QUICK_DATA = Dataset(seed=6, bigbox_messages=5000, bigmsg_bytes=5 * MB, idle_users=100)


@dataclass(slots=True)
class Run:
    figures: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    in_use_retries: int = 0
    error_samples: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    loadgen_cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.errors == 0

    def absorb(self, tally: Tally) -> None:
        self.errors += tally.errors
        self.in_use_retries += tally.in_use_retries
        self.error_samples += tally.samples[: 20 - len(self.error_samples)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "figures": self.figures,
            "errors": self.errors,
            "in_use_retries": self.in_use_retries,
            "error_samples": self.error_samples,
            "wall_s": self.wall_s,
            "server_cpu_s": self.server_cpu_s,
            "loadgen_cpu_s": self.loadgen_cpu_s,
            **self.extra,
        }


@dataclass(slots=True)
class Env:
    """What workloads share: data set, scale, TLS context, per-server UIDL memory."""

    data: Dataset
    scale: Scale
    tls: Any  # ssl.SSLContext
    listings: dict[str, dict[str, tuple[list[bytes], list[int]]]] = field(default_factory=dict)

    def tally(self, server: RunningServer) -> Tally:
        return Tally(listings=self.listings.setdefault(server.label, {}))


class Meter:
    """Server tree CPU and load-generator CPU across a block of work."""

    def __init__(self, server: RunningServer) -> None:
        self.pid = server.pid

    def __enter__(self) -> Meter:
        self.cpu0 = procstat.cpu_seconds(procstat.tree_pids(self.pid))
        self.lg0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server_cpu = procstat.cpu_seconds(procstat.tree_pids(self.pid)) - self.cpu0
        self.loadgen_cpu = time.process_time() - self.lg0
        self.wall = time.perf_counter() - self.t0


async def _sessions(
    server: RunningServer,
    env: Env,
    t: Transport,
    *,
    pipelined: bool,
    prefix: str,
    run: Run,
    total: int | None = None,
) -> None:
    s = env.scale
    n = total if total is not None else (s.tls_sessions if t.tls is not None else s.sessions)
    tally = env.tally(server)
    with Meter(server) as m:
        tally, wall = await loadgen.run_sessions(
            t, env.data.session_users(), n, s.clients, pipelined=pipelined, tally=tally
        )
    run.absorb(tally)
    run.figures[f"{prefix}sessions_per_s"] = tally.sessions / wall
    run.figures[f"{prefix}server_cpu_ms_per_session"] = m.server_cpu * 1000 / max(1, n)
    run.wall_s += wall
    run.server_cpu_s += m.server_cpu
    run.loadgen_cpu_s += m.loadgen_cpu
    run.extra[f"{prefix}retr_MB"] = tally.retr_bytes / MB


async def sessions(server: RunningServer, env: Env, warm: bool) -> Run:
    run = Run()
    total = env.data.sessions_users if warm else None
    await _sessions(
        server, env, Transport(server.ports.pop3), pipelined=False, prefix="", run=run, total=total
    )
    return run


async def pipelined(server: RunningServer, env: Env, warm: bool) -> Run:
    run = Run()
    total = env.data.sessions_users if warm else None
    await _sessions(
        server, env, Transport(server.ports.pop3), pipelined=True, prefix="", run=run, total=total
    )
    return run


async def tls(server: RunningServer, env: Env, warm: bool) -> Run:
    run = Run()
    total = env.data.sessions_users if warm else None
    if server.ports.pop3s is not None:
        await _sessions(
            server,
            env,
            Transport(server.ports.pop3s, env.tls),
            pipelined=False,
            prefix="implicit_",
            run=run,
            total=total,
        )
    else:
        run.extra["implicit_skipped"] = "server has no implicit-TLS listener"
    await _sessions(
        server,
        env,
        Transport(server.ports.pop3, env.tls, stls=True),
        pipelined=False,
        prefix="stls_",
        run=run,
        total=total,
    )
    return run


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def bigbox(server: RunningServer, env: Env, warm: bool) -> Run:
    run = Run()
    tally = env.tally(server)
    user = env.data.bigbox()
    with Meter(server) as m:
        for _ in range(1 if warm else env.scale.bigbox_iters):
            try:
                await loadgen.listing_latency(Transport(server.ports.pop3), user, tally)
            except SESSION_ERRORS as exc:
                tally.fail(f"bigbox: {exc}")
    run.absorb(tally)
    if tally.latencies:
        run.figures["p50_ms"] = _percentile(tally.latencies, 0.5) * 1000
        run.figures["p99_ms"] = _percentile(tally.latencies, 0.99) * 1000
    run.extra["messages"] = len(tally.listings.get(user.name, ([], []))[1])
    run.wall_s, run.server_cpu_s, run.loadgen_cpu_s = m.wall, m.server_cpu, m.loadgen_cpu
    return run


async def bigmsg(server: RunningServer, env: Env, warm: bool) -> Run:
    run = Run()
    tally = env.tally(server)
    user = env.data.bigmsg()
    base = procstat.sample(server.pid, pss=False).rss_bytes
    peak = 0
    with Meter(server) as m:
        for _ in range(1 if warm else env.scale.bigmsg_iters):
            with procstat.PeakRss(server.pid) as sampler:
                try:
                    await loadgen.big_retr(Transport(server.ports.pop3), user, tally)
                except SESSION_ERRORS as exc:
                    tally.fail(f"bigmsg: {exc}")
            peak = max(peak, sampler.peak)
    run.absorb(tally)
    if tally.latencies:
        size = env.data.bigmsg_bytes
        run.figures["MB_per_s"] = size / MB / statistics.median(tally.latencies)
        run.figures["peak_rss_MB"] = peak / MB
        run.figures["peak_rss_growth_MB"] = (peak - base) / MB
        run.figures["base_rss_MB"] = base / MB
    run.wall_s, run.server_cpu_s, run.loadgen_cpu_s = m.wall, m.server_cpu, m.loadgen_cpu
    return run


async def idle(server: RunningServer, env: Env, warm: bool) -> Run:
    run = Run()
    tally = env.tally(server)
    users = env.data.idle()[: 10 if warm else None]
    before = procstat.sample(server.pid)
    with Meter(server) as m:
        conns = await loadgen.open_idle(
            Transport(server.ports.pop3), users, tally, env.scale.idle_concurrency
        )
    await asyncio.sleep(1.0)  # let forked processes finish touching their pages
    after = procstat.sample(server.pid)
    await loadgen.close_idle(conns, tally, env.scale.idle_concurrency)
    run.absorb(tally)
    n = max(1, tally.sessions)
    run.figures["pss_kB_per_session"] = (after.pss_bytes - before.pss_bytes) / n / 1024
    run.figures["rss_kB_per_session"] = (after.rss_bytes - before.rss_bytes) / n / 1024
    run.figures["login_per_s"] = n / m.wall
    run.extra.update(
        sessions=tally.sessions,
        processes_before=before.pids,
        processes_after=after.pids,
        pss_MB_after=after.pss_bytes / MB,
    )
    run.wall_s, run.server_cpu_s, run.loadgen_cpu_s = m.wall, m.server_cpu, m.loadgen_cpu
    return run


async def delivery(server: RunningServer, env: Env, warm: bool) -> Run:
    run = Run()
    if server.ports.lmtp is None:
        run.errors, run.error_samples = 1, ["server has no LMTP listener"]
        return run
    sinks = env.data.sinks()
    n = 20 if warm else env.scale.deliveries
    jobs = [
        (sinks[i % len(sinks)].name, message(f"{env.data.seed}:delivery", i, env.data.message_size))
        for i in range(n)
    ]
    with Meter(server) as m:
        tally, wall = await loadgen.run_deliveries(server.ports.lmtp, jobs, env.scale.senders)
    run.absorb(tally)
    run.figures["messages_per_s"] = tally.sessions / wall
    run.figures["server_cpu_ms_per_message"] = m.server_cpu * 1000 / max(1, n)
    run.wall_s, run.server_cpu_s, run.loadgen_cpu_s = wall, m.server_cpu, m.loadgen_cpu
    return run


async def filtered(server: RunningServer, env: Env, warm: bool) -> Run:
    """cgpop only: login + STAT + UIDL + LIST through the individual name one@filter.local
    (sees the 1% delivered to it) against the owner's login fbig@bench.local (sees all: a copy
    of bigbox plus that 1%), alternating, on the same maildrop."""
    run = Run()
    one, owner = env.data.filtered_login(), env.data.filtered_owner()
    shared = env.tally(server).listings
    tallies = {"filtered": Tally(listings=shared), "unfiltered": Tally(listings=shared)}
    with Meter(server) as m:
        for _ in range(1 if warm else env.scale.filtered_iters):
            for key, user in (("filtered", one), ("unfiltered", owner)):
                try:
                    await loadgen.listing_latency(Transport(server.ports.pop3), user, tallies[key])
                except SESSION_ERRORS as exc:
                    tallies[key].fail(f"{key}: {exc}")
    for key, tally in tallies.items():
        run.absorb(tally)
        if tally.latencies:
            run.figures[f"{key}_p50_ms"] = _percentile(tally.latencies, 0.5) * 1000
            run.figures[f"{key}_p99_ms"] = _percentile(tally.latencies, 0.99) * 1000
    if "filtered_p50_ms" in run.figures and "unfiltered_p50_ms" in run.figures:
        run.figures["filtered_over_unfiltered_p50"] = (
            run.figures["filtered_p50_ms"] / run.figures["unfiltered_p50_ms"]
        )
    run.extra["messages_filtered"] = len(shared.get(one.name, ([], []))[1])
    run.extra["messages_unfiltered"] = len(shared.get(owner.name, ([], []))[1])
    run.wall_s, run.server_cpu_s, run.loadgen_cpu_s = m.wall, m.server_cpu, m.loadgen_cpu
    return run


Workload = Callable[[RunningServer, Env, bool], Awaitable[Run]]
WORKLOADS: dict[str, Workload] = {
    "sessions": sessions,
    "pipelined": pipelined,
    "tls": tls,
    "bigbox": bigbox,
    "bigmsg": bigmsg,
    "idle": idle,
    "delivery": delivery,
    "filtered": filtered,
}
# Which server labels take part in a workload (default: all).
APPLIES: dict[str, Callable[[str], bool]] = {
    "filtered": lambda label: label == "cgpop",
}
# cgpop is restarted before these, so earlier workloads' heap does not hide their memory:
# before the warm-up (idle: 10 logins, then the measured 10,000) or before every timed run
# (bigmsg: the peak RSS of a fresh process's first 50 MB RETRs).
FRESH_BEFORE_WARMUP = frozenset({"idle"})
FRESH_BEFORE_EACH = frozenset({"bigmsg"})
# The figure each ratio is taken on, and whether higher is better.
HEADLINE: dict[str, list[tuple[str, bool]]] = {
    "sessions": [("sessions_per_s", True), ("server_cpu_ms_per_session", False)],
    "pipelined": [("sessions_per_s", True), ("server_cpu_ms_per_session", False)],
    "tls": [("implicit_sessions_per_s", True), ("stls_sessions_per_s", True)],
    "bigbox": [("p50_ms", False), ("p99_ms", False)],
    "bigmsg": [("MB_per_s", True), ("peak_rss_MB", False), ("peak_rss_growth_MB", False)],
    "idle": [("pss_kB_per_session", False), ("rss_kB_per_session", False)],
    "delivery": [("messages_per_s", True), ("server_cpu_ms_per_message", False)],
    "filtered": [
        ("filtered_p50_ms", False),
        ("unfiltered_p50_ms", False),
        ("filtered_over_unfiltered_p50", False),
    ],
}
