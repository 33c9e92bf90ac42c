"""The workloads of issue 6: each runs once against one server and returns a Run.

A Run holds figures (the numbers compared), the server's CPU time and memory from /proc, the
load generator's own CPU time (it shares the machine), and the error count: `valid` is False as
soon as one reply failed a check, and such a run is never reported as a figure.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import clients, loadgen, procstat, rawpop, tlsresume
from bench.dataset import Dataset, User, message
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
    # idle (issue 14 section 3): sessions held at once, spread over the data set's idle
    # accounts; Dovecot at 10,000 is the side-by-side point (656 kB a session: 100,000 would
    # need 65 GB).
    idle_sessions: int = 100_000
    idle_sessions_dovecot: int = 10_000
    idle_fresh: int = 200  # fresh login + STAT + QUIT timed while the sessions are held
    # Sessions per client process: a process may hold at most 20,000 open files here (a hard
    # limit root cannot raise), so the idle client is split over several processes.
    idle_per_process: int = 15_000
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
    idle_sessions=300,
    idle_sessions_dovecot=200,
    idle_fresh=20,
    idle_per_process=150,
)
# One source address has ~28k ephemeral ports (32768-60999); leave room for TIME_WAIT.
PORTS_PER_ADDRESS = 25_000
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
    # Per measured block (e.g. "implicit", "stls"): resource use and what saturated.
    usage: dict[str, procstat.Usage] = field(default_factory=dict)
    usage_parts: dict[str, list[procstat.Usage]] = field(default_factory=dict)
    saturation: dict[str, str] = field(default_factory=dict)

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
            "usage": {k: u.as_dict() for k, u in self.usage.items()},
            "saturation": self.saturation,
            **self.extra,
        }


@dataclass(slots=True)
class Env:
    """What workloads share: data set, scale, TLS context, per-server UIDL memory."""

    data: Dataset
    scale: Scale
    tls: Any  # ssl.SSLContext
    cafile: Path | None = None  # the certificate, for client processes' own TLS contexts
    run_dir: Path | None = None  # its disk's busy time is measured
    clients: int = 1  # load-client processes (--clients); 1: the harness itself
    ceiling_port: int | None = None  # bigmsg's sendfile ceiling server
    bigmsg_stuffed: int = 0  # octets of the dot-stuffed big message, without ".\r\n"
    listings: dict[str, dict[str, tuple[list[bytes], list[int]]]] = field(default_factory=dict)

    def tally(self, server: RunningServer) -> Tally:
        return Tally(listings=self.listings.setdefault(server.label, {}))


class Meter:
    """Server and load-client CPU, all cores and the disk across a block of work.

    The client is this process (time.process_time) plus every client process that reported
    its CPU through add_clients() (--clients N). `usage` says, per process, what saturated."""

    def __init__(self, server: RunningServer, env: Env | None = None) -> None:
        self.pid = server.pid
        self.roots = [server.pid, *server.extra_roots]
        self.disk_path = str(env.run_dir) if env is not None and env.run_dir else None
        self.children: list[float] = []

    def add_clients(self, cpu_s: list[float]) -> None:
        self.children += cpu_s

    def _pids(self) -> list[int]:
        return [p for root in self.roots for p in procstat.tree_pids(root)]

    def __enter__(self) -> Meter:
        pids = self._pids()
        self.own0 = procstat.own_cpu(pids)
        self.cpu0 = procstat.cpu_seconds(pids)
        self.machine0 = procstat.machine_busy_s()
        self.disk0 = procstat.disk_io_ms(self.disk_path) if self.disk_path else None
        self.lg0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        own_lg = time.process_time() - self.lg0
        pids = self._pids()
        own1 = procstat.own_cpu(pids)
        self.server_cpu = procstat.cpu_seconds(pids) - self.cpu0
        self.loadgen_cpu = own_lg + sum(self.children)
        disk1 = procstat.disk_io_ms(self.disk_path) if self.disk_path else None
        wall = max(self.wall, 1e-9)
        delta = {p: c - self.own0.get(p, 0.0) for p, c in own1.items()}
        busiest = max(delta.values(), default=0.0)
        self.usage = procstat.Usage(
            wall_s=self.wall,
            server_cores=self.server_cpu / wall,
            server_busiest=busiest / wall,
            client_cores=self.loadgen_cpu / wall,
            client_busiest=max([own_lg, *self.children]) / wall,
            client_processes=1 + len(self.children),
            machine_cores=(procstat.machine_busy_s() - self.machine0) / wall,
            nproc=os.cpu_count() or 1,
            disk_util=None
            if disk1 is None or self.disk0 is None
            else (disk1 - self.disk0) / 1000 / wall,
            server_by_name=procstat.by_name({p: c for p, c in delta.items() if c > 0}, wall),
        )

    def record(self, run: Run, what: str = "") -> None:
        """Keep this block's usage and verdict in the run (`what` names the block); a block
        recorded again (bigmsg's iterations) is combined with the earlier ones."""
        key = what or "run"
        parts = [*run.usage_parts.get(key, []), self.usage]
        run.usage_parts[key] = parts
        run.usage[key] = procstat.combine(parts)
        run.saturation[key] = procstat.verdict(run.usage[key])


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
    with Meter(server, env) as m:
        if env.clients > 1:
            jobs = clients.sessions_jobs(
                t,
                env.cafile,
                env.data.session_users(),
                n,
                s.clients,
                env.clients,
                pipelined=pipelined,
            )
            wall, cpu = await clients.run_jobs(jobs, tally)
            m.add_clients(cpu)
        else:
            tally, wall = await loadgen.run_sessions(
                t, env.data.session_users(), n, s.clients, pipelined=pipelined, tally=tally
            )
    m.record(run, prefix.rstrip("_"))
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


async def _resumed(
    server: RunningServer, env: Env, port: int, stls: bool, prefix: str, run: Run, total: int
) -> None:
    tally = env.tally(server)
    clients_n = env.scale.clients
    with Meter(server, env) as m:
        if env.clients > 1:
            t = Transport(port, env.tls, stls)
            jobs = clients.sessions_jobs(
                t, env.cafile, env.data.session_users(), total, clients_n, env.clients, resume=True
            )
            pool = clients.Pool(jobs)
            try:
                await pool.start()
                start = time.perf_counter()
                await pool.go()
                done = await pool.expect_all("done")
                wall = time.perf_counter() - start
            finally:
                await pool.close()
            offered = reused = 0
            for d in done:
                clients.merge(tally, d["tally"])
                offered, reused = offered + d["offered"], reused + d["reused"]
            m.add_clients([d["cpu_s"] for d in done])
        else:
            res, wall = await asyncio.to_thread(
                tlsresume.run_sessions,
                port,
                env.tls,
                stls,
                env.data.session_users(),
                total,
                clients_n,
                tally,
            )
            offered, reused = res.offered, res.reused
    m.record(run, prefix.rstrip("_"))
    run.absorb(tally)
    run.figures[f"{prefix}sessions_per_s"] = tally.sessions / wall
    run.figures[f"{prefix}server_cpu_ms_per_session"] = m.server_cpu * 1000 / max(1, total)
    # Share of the sessions that offered a previous session which the server resumed.
    run.figures[f"{prefix}resumed_fraction"] = reused / offered if offered else 0.0
    run.extra[f"{prefix}offered"] = offered
    run.extra[f"{prefix}reused"] = reused
    run.wall_s += wall
    run.server_cpu_s += m.server_cpu
    run.loadgen_cpu_s += m.loadgen_cpu


async def tls_resume(server: RunningServer, env: Env, warm: bool) -> Run:
    """The tls workload with a client that offers its previous TLS session on each new
    connection (tlsresume.py), over implicit TLS and STLS; reports whether the server resumed."""
    run = Run()
    total = env.data.sessions_users if warm else env.scale.tls_sessions
    if server.ports.pop3s is not None:
        await _resumed(server, env, server.ports.pop3s, False, "implicit_", run, total)
    await _resumed(server, env, server.ports.pop3, True, "stls_", run, total)
    return run


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def bigbox(server: RunningServer, env: Env, warm: bool) -> Run:
    run = Run()
    tally = env.tally(server)
    user = env.data.bigbox()
    with Meter(server, env) as m:
        for _ in range(1 if warm else env.scale.bigbox_iters):
            try:
                await loadgen.listing_latency(Transport(server.ports.pop3), user, tally)
            except SESSION_ERRORS as exc:
                tally.fail(f"bigbox: {exc}")
    m.record(run)
    run.absorb(tally)
    if tally.latencies:
        run.figures["p50_ms"] = _percentile(tally.latencies, 0.5) * 1000
        run.figures["p99_ms"] = _percentile(tally.latencies, 0.99) * 1000
    run.extra["messages"] = len(tally.listings.get(user.name, ([], []))[1])
    run.wall_s, run.server_cpu_s, run.loadgen_cpu_s = m.wall, m.server_cpu, m.loadgen_cpu
    return run


async def _raw(port: int, user: User, env: Env, tally: Tally, tls: bool = False) -> float | None:
    """One raw RETR (rawpop.py) in a thread; its seconds, or None after a counted failure."""
    try:
        res = await asyncio.to_thread(
            rawpop.raw_retr,
            port,
            user.name,
            user.password,
            env.bigmsg_stuffed,
            tls=env.tls if tls else None,
        )
    except (rawpop.RawCheckFailed, OSError) as exc:
        tally.fail(f"raw RETR{' (TLS)' if tls else ''}: {type(exc).__name__}: {exc}")
        return None
    tally.retr_bytes += res.octets
    return res.seconds


async def bigmsg(server: RunningServer, env: Env, warm: bool) -> Run:
    """RETR of one big message, four ways (issue 14 section 2):
    - raw: read with rawpop (large recv_into, framing and octet count only): the headline;
    - ceiling: the same raw read from bench/ceiling.py (os.sendfile of the same stuffed octets),
      interleaved with the server's reads, so `fraction_of_ceiling` compares like with like;
    - parsed: loadgen's line-checking client, "what a Python client sees";
    - tls: raw over implicit TLS, with the server's peak RSS.
    MB/s counts the stuffed body's octets (what crosses the socket)."""
    run = Run()
    tally = env.tally(server)
    user = env.data.bigmsg()
    size_mb = env.bigmsg_stuffed / MB
    iters = 1 if warm else env.scale.bigmsg_iters
    base = procstat.sample(server.pid, pss=False).rss_bytes
    peak = tls_peak = 0
    raw: list[float] = []
    ceiling: list[float] = []
    parsed: list[float] = []
    tls_s: list[float] = []
    ceiling_tally = Tally()
    meters: list[Meter] = []
    for _ in range(iters):
        with Meter(server, env) as m, procstat.PeakRss(server.pid) as sampler:
            meters.append(m)
            secs = await _raw(server.ports.pop3, user, env, tally)
        peak = max(peak, sampler.peak)
        if secs is not None:
            raw.append(secs)
            m.record(run, "raw")
        if env.ceiling_port is not None:
            secs = await _raw(env.ceiling_port, user, env, ceiling_tally)
            if secs is not None:
                ceiling.append(secs)
    for _ in range(iters):
        with Meter(server, env) as m, procstat.PeakRss(server.pid) as sampler:
            meters.append(m)
            try:
                await loadgen.big_retr(Transport(server.ports.pop3), user, tally)
            except SESSION_ERRORS as exc:
                tally.fail(f"bigmsg parsed: {exc}")
        peak = max(peak, sampler.peak)
        m.record(run, "parsed")
    parsed = tally.latencies
    if server.ports.pop3s is not None:
        for _ in range(iters):
            with Meter(server, env) as m, procstat.PeakRss(server.pid) as sampler:
                meters.append(m)
                secs = await _raw(server.ports.pop3s, user, env, tally, tls=True)
            tls_peak = max(tls_peak, sampler.peak)
            if secs is not None:
                tls_s.append(secs)
                m.record(run, "tls")
    run.absorb(tally)
    run.absorb(ceiling_tally)
    for m in meters:
        run.wall_s += m.wall
        run.server_cpu_s += m.server_cpu
        run.loadgen_cpu_s += m.loadgen_cpu
    if raw:
        run.figures["MB_per_s"] = size_mb / statistics.median(raw)
    if ceiling:
        run.figures["ceiling_MB_per_s"] = size_mb / statistics.median(ceiling)
        if raw:
            run.figures["fraction_of_ceiling"] = (
                run.figures["MB_per_s"] / run.figures["ceiling_MB_per_s"]
            )
    if parsed:
        run.figures["parsed_MB_per_s"] = size_mb / statistics.median(parsed)
    if tls_s:
        run.figures["tls_MB_per_s"] = size_mb / statistics.median(tls_s)
        run.figures["tls_peak_rss_MB"] = tls_peak / MB
    run.figures["peak_rss_MB"] = peak / MB
    run.figures["peak_rss_growth_MB"] = (peak - base) / MB
    run.figures["base_rss_MB"] = base / MB
    return run


def idle_sources(sessions: int) -> list[str]:
    """Source addresses for `sessions` held sessions: 127.0.1.1, 127.0.1.2, ... (at least two,
    so a small run exercises the binding too), each under PORTS_PER_ADDRESS."""
    n = max(2, -(-sessions // PORTS_PER_ADDRESS))
    return [f"127.0.1.{k}" for k in range(1, n + 1)]


def idle_count(server: RunningServer, env: Env) -> int:
    s = env.scale
    return s.idle_sessions_dovecot if server.label.startswith("dovecot") else s.idle_sessions


async def _fresh_latency(server: RunningServer, env: Env, n: int, tally: Tally) -> list[float]:
    """login + STAT + QUIT, one fresh connection at a time, while the idle sessions are held."""
    users = env.data.idle()
    out = []
    for i in range(n):
        start = time.perf_counter()
        try:
            conn = await loadgen.Pop3.connect(Transport(server.ports.pop3))
            try:
                await conn.login(users[(i * 7919) % len(users)])
                conn.send(b"STAT\r\n")
                await conn.status("STAT")
                conn.send(b"QUIT\r\n")
                await conn.status("QUIT")
            finally:
                await conn.close()
        except SESSION_ERRORS as exc:
            tally.fail(f"fresh session while idle held: {exc}")
            continue
        out.append(time.perf_counter() - start)
    return out


async def idle(server: RunningServer, env: Env, warm: bool) -> Run:
    """idle_sessions (Dovecot: idle_sessions_dovecot) logged-in sessions held at once, spread
    over the idle accounts and several source addresses, opened by as many client processes as
    the 20,000-file limit needs (at least --clients); memory per session is the growth of RSS
    and PSS summed over the server's whole process tree (every worker); while they are held,
    idle_fresh fresh login + STAT + QUIT sessions are timed (p50, p99)."""
    run = Run()
    tally = env.tally(server)
    s = env.scale
    accounts = env.data.idle()
    n = 10 if warm else idle_count(server, env)
    users = [accounts[i % len(accounts)] for i in range(n)]
    sources = idle_sources(n)
    procs = max(env.clients, -(-n // s.idle_per_process))
    before = procstat.sample(server.pid)
    pool: clients.Pool | None = None
    conns: list[loadgen.Pop3] = []
    try:
        with Meter(server, env) as m:
            if procs > 1 and not warm:
                shares = clients.split(n, procs)
                jobs, at = [], 0
                for k, share in enumerate(shares):
                    jobs.append(
                        {
                            "kind": "idle",
                            "port": server.ports.pop3,
                            "users": clients._users(users[at : at + share]),
                            "concurrency": max(1, s.idle_concurrency // procs),
                            # each process gets its own address order, so addresses fill evenly
                            "sources": sources[k % len(sources) :] + sources[: k % len(sources)],
                        }
                    )
                    at += share
                pool = clients.Pool(jobs)
                await pool.start()
                await pool.go()
                held = await pool.expect_all("held")
                m.add_clients([h["cpu_s"] for h in held])
                opened = sum(h["sessions"] for h in held)
            else:
                conns = await loadgen.open_idle(
                    Transport(server.ports.pop3), users, tally, s.idle_concurrency, sources
                )
                opened = tally.sessions
        m.record(run, "open")
        await asyncio.sleep(1.0)  # let forked processes finish touching their pages
        after = procstat.sample(server.pid)
        fresh = await _fresh_latency(server, env, 2 if warm else s.idle_fresh, tally)
        if pool is not None:
            await pool.release()
            await pool.finish(tally)
        else:
            await loadgen.close_idle(conns, tally, s.idle_concurrency)
    finally:
        if pool is not None:
            await pool.close()
    run.absorb(tally)
    k = max(1, opened)
    run.figures["pss_kB_per_session"] = (after.pss_bytes - before.pss_bytes) / k / 1024
    run.figures["rss_kB_per_session"] = (after.rss_bytes - before.rss_bytes) / k / 1024
    run.figures["sessions_held"] = opened
    run.figures["login_per_s"] = opened / m.wall
    if fresh:
        run.figures["fresh_p50_ms"] = _percentile(fresh, 0.5) * 1000
        run.figures["fresh_p99_ms"] = _percentile(fresh, 0.99) * 1000
    run.extra.update(
        sessions_wanted=n,
        accounts=min(n, len(accounts)),
        source_addresses=sources,
        client_processes=procs if procs > 1 and not warm else 1,
        processes_before=before.pids,
        processes_after=after.pids,
        pss_MB_after=after.pss_bytes / MB,
        rss_MB_after=after.rss_bytes / MB,
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
    seed, size = f"{env.data.seed}:delivery", env.data.message_size
    rcpts = [(sinks[i % len(sinks)].name, i) for i in range(n)]
    tally = Tally()
    with Meter(server, env) as m:
        if env.clients > 1 and not warm:
            senders = clients.split(env.scale.senders, env.clients)
            parts = [rcpts[k :: env.clients] for k in range(env.clients)]
            jobs = [
                {
                    "kind": "delivery",
                    "port": server.ports.lmtp,
                    "seed": seed,
                    "size": size,
                    "senders": c,
                    "jobs": part,
                }
                for part, c in zip(parts, senders, strict=True)
                if part and c
            ]
            wall, cpu = await clients.run_jobs(jobs, tally)
            m.add_clients(cpu)
        else:
            jobs_ = [(rcpt, message(seed, i, size)) for rcpt, i in rcpts]
            tally, wall = await loadgen.run_deliveries(server.ports.lmtp, jobs_, env.scale.senders)
    m.record(run)
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
    with Meter(server, env) as m:
        for _ in range(1 if warm else env.scale.filtered_iters):
            for key, user in (("filtered", one), ("unfiltered", owner)):
                try:
                    await loadgen.listing_latency(Transport(server.ports.pop3), user, tallies[key])
                except SESSION_ERRORS as exc:
                    tallies[key].fail(f"{key}: {exc}")
    m.record(run)
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


async def cluster(server: RunningServer, env: Env, warm: bool) -> Run:
    """Issue 11: sessions and delivery on the embedded store, on PostgreSQL (one node, two
    behind HAProxy) and on Dovecot hp, with the database's statements and round trips
    (bench/cluster.py)."""
    from bench import cluster as cluster_workload

    return await cluster_workload.run(server, env, warm)


Workload = Callable[[RunningServer, Env, bool], Awaitable[Run]]
WORKLOADS: dict[str, Workload] = {
    "sessions": sessions,
    "pipelined": pipelined,
    "tls": tls,
    "tls-resume": tls_resume,
    "bigbox": bigbox,
    "bigmsg": bigmsg,
    "idle": idle,
    "delivery": delivery,
    "filtered": filtered,
    "cluster": cluster,
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
    "tls-resume": [
        ("implicit_sessions_per_s", True),
        ("implicit_resumed_fraction", True),
        ("stls_sessions_per_s", True),
        ("stls_resumed_fraction", True),
    ],
    "bigbox": [("p50_ms", False), ("p99_ms", False)],
    "bigmsg": [
        ("MB_per_s", True),
        ("fraction_of_ceiling", True),
        ("ceiling_MB_per_s", True),
        ("parsed_MB_per_s", True),
        ("tls_MB_per_s", True),
        ("tls_peak_rss_MB", False),
        ("peak_rss_MB", False),
        ("peak_rss_growth_MB", False),
    ],
    "idle": [
        ("sessions_held", True),
        ("pss_kB_per_session", False),
        ("rss_kB_per_session", False),
        ("fresh_p99_ms", False),
    ],
    "delivery": [("messages_per_s", True), ("server_cpu_ms_per_message", False)],
    "cluster": [
        ("sessions_per_s", True),
        ("server_cpu_ms_per_session", False),
        ("messages_per_s", True),
        ("server_cpu_ms_per_message", False),
        ("db_statements_per_session", False),
        ("db_statements_per_delivery", False),
        ("db_round_trips_per_open", False),
        ("db_round_trips_per_login", False),
        ("db_round_trips_per_session", False),
        ("db_round_trips_per_delivery", False),
    ],
    "filtered": [
        ("filtered_p50_ms", False),
        ("unfiltered_p50_ms", False),
        ("filtered_over_unfiltered_p50", False),
    ],
}
