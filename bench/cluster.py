"""The `cluster` workload (issue 11): `sessions` then `delivery` against one server, and on a
PostgreSQL-backed one the database work they cost.

Per server: the sessions figures (sessions/s, server CPU per session) and the delivery figures
(messages/s, server CPU per message), each block with its own "what saturated". On `cgpop-pg`
and `cgpop-pg2` (pgcluster.py) also:

- `db_statements_per_session` / `_per_delivery`: pg_stat_statements calls in cgpop's database
  over the timed block, divided by its sessions or deliveries; everything the node ran in that
  time counts (heartbeats, polls, group commits of \\Seen and of deliveries). The busiest
  statements per session are kept in latest.json (`db_statements`).
- `db_round_trips_per_open` (cgpop-pg only; the code path is the same behind HAProxy): the
  round trips a login waits for, from USER to PASS's +OK, counted on the wire by
  pgwire.Relay in front of a separate probe node, outside the timed blocks, logins one at a
  time; turns of the node's background writers in that window (BACKGROUND_SQL, recognised
  by their statements) are left out, `_open_all` keeps them; the median login (the mean in
  `_open_mean`; each sequence of turns and how often it occurred in latest.json,
  `db_open_turns_waited`).
- `db_round_trips_per_login` / `_per_session` / `_per_delivery`: every turn the node makes
  per USER/PASS/QUIT login, per full `sessions` session (STAT, UIDL, LIST, RETR all, QUIT),
  per single LMTP delivery, deferred writes included; the probe node's idle rate (its
  heartbeat and polls), measured just before, is subtracted.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from bench import loadgen
from bench.dataset import User, message
from bench.loadgen import Tally, Transport
from bench.pgcluster import Database, Node, delta
from bench.pgwire import Relay
from bench.servers import RunningServer
from bench.workloads import SESSION_ERRORS, Env, Run, _sessions, delivery

# The probe's idle window (its background turns per second are subtracted), and the wait
# after each probe block for the node's deferred writes (registry rows of closed sessions,
# the \Seen group commit) to reach the database.
IDLE_WINDOW_S = 2.0
SETTLE_S = 0.5
# Statements kept per block in latest.json (the busiest, per session or delivery).
TOP_STATEMENTS = 12
# Round trips of the probe's delivery block kept in latest.json (its last ones).
DELIVERY_SAMPLE = 25
# SQL of the node's background writers, which no client waits for: the live-session
# registry's task (cgpop/livesessions.py: rows of opened and closed sessions, the poll for
# kill requests and the telemetry version) and the registry thread (pg_base.py: releases of
# closed sessions, heartbeats). A turn carrying one of these is theirs.
BACKGROUND_SQL = (
    "live_sessions",
    "telemetry",
    "DELETE FROM store_sessions",
    "SET heartbeat",
)


def _first(turn: list[str]) -> str:
    """A turn by its first statement after BEGIN (its SQL's first 60 characters)."""
    telling = [sql for sql in turn if sql.strip().upper() != "BEGIN"] or turn
    return telling[0][:60] if telling else "(no statement: Sync or Flush)"


def background(turn: list[str]) -> bool:
    return any(marker in sql for sql in turn for marker in BACKGROUND_SQL)


def _rename(run: Run, old: str, new: str) -> None:
    if old in run.usage:
        run.usage[new] = run.usage.pop(old)
        run.usage_parts[new] = run.usage_parts.pop(old)
        run.saturation[new] = run.saturation.pop(old)


def _per(db: Database, before: dict[str, int], n: int, run: Run, name: str) -> dict[str, int]:
    after = db.statements()
    calls = delta(before, after)
    run.figures[f"db_statements_per_{name}"] = sum(calls.values()) / max(1, n)
    run.extra[f"db_statements_per_{name}_top"] = {
        q[:160]: round(c / max(1, n), 3) for q, c in list(calls.items())[:TOP_STATEMENTS]
    }
    return after


async def run(server: RunningServer, env: Env, warm: bool) -> Run:
    out = Run()
    db = server.attached.get("database")
    assert db is None or isinstance(db, Database)
    total = env.data.sessions_users if warm else None
    sessions_n = total if total is not None else env.scale.sessions
    counts = db.statements() if db is not None and not warm else None
    await _sessions(
        server, env, Transport(server.ports.pop3), pipelined=False, prefix="", run=out, total=total
    )
    _rename(out, "run", "sessions")
    if db is not None and counts is not None:
        counts = _per(db, counts, sessions_n, out, "session")
    d = await delivery(server, env, warm)
    if db is not None and counts is not None:
        _per(db, counts, 20 if warm else env.scale.deliveries, out, "delivery")
    out.figures.update(d.figures)
    out.errors += d.errors
    out.error_samples += d.error_samples
    out.wall_s += d.wall_s
    out.server_cpu_s += d.server_cpu_s
    out.loadgen_cpu_s += d.loadgen_cpu_s
    for key, value in d.usage.items():
        out.usage["delivery"] = value
        out.usage_parts["delivery"] = d.usage_parts[key]
        out.saturation["delivery"] = d.saturation[key]
    probe = server.attached.get("probe")
    if probe is not None and not warm:
        assert isinstance(probe, tuple)
        node, relay = probe
        tally = Tally()
        assert db is not None
        out.figures.update(await round_trips(node, relay, env, tally, db, out))
        out.absorb(tally)
    return out


async def _logins(
    port: int, users: list[User], n: int, tally: Tally, relay: Relay | None = None
) -> list[list[list[str]]]:
    """USER/PASS then QUIT, one connection at a time: the session-open path alone. Returns,
    per login, the relay's turns (their statements) between USER and PASS's +OK."""
    windows = []
    for i in range(n):
        try:
            conn = await loadgen.Pop3.connect(Transport(port))
            try:
                at = len(relay.log) if relay else 0
                await conn.login(users[i % len(users)])
                windows.append(relay.log[at:] if relay else [])
                conn.send(b"QUIT\r\n")
                await conn.status("QUIT")
            finally:
                await conn.close()
            tally.sessions += 1
        except SESSION_ERRORS as exc:
            tally.fail(f"probe login: {exc}")
    return windows


async def _turns(relay: Relay, rate: float, n: int, work: Callable[[], Awaitable[None]]) -> float:
    """Client turns per unit of `work` (n units), the idle rate taken out."""
    turns0, _ = relay.counts()
    start = time.perf_counter()
    await work()
    await asyncio.sleep(SETTLE_S)
    wall = time.perf_counter() - start
    turns1, _ = relay.counts()
    return max(0.0, turns1 - turns0 - rate * wall) / max(1, n)


async def round_trips(
    node: Node, relay: Relay, env: Env, tally: Tally, db: Database, out: Run
) -> dict[str, float]:
    """Round trips per login, per session and per delivery, through the probe node; the
    statements of the login block go to latest.json (`db_statements_per_login_top`)."""
    n = min(50, max(20, env.scale.sessions // 40))
    users = env.data.session_users()
    pop3 = node.ports.pop3
    assert node.ports.lmtp is not None
    lmtp = node.ports.lmtp
    await _logins(pop3, users, len(users), tally)  # registers the node, warms its caches
    turns0, _ = relay.counts()
    await asyncio.sleep(IDLE_WINDOW_S)
    rate = (relay.counts()[0] - turns0) / IDLE_WINDOW_S

    async def sessions() -> None:
        got, _ = await loadgen.run_sessions(Transport(pop3), users, n, 1, tally=Tally())
        tally.sessions += got.sessions
        tally.errors += got.errors
        tally.samples += got.samples

    async def deliveries() -> None:
        sinks = env.data.sinks()
        seed, size = f"{env.data.seed}:probe", env.data.message_size
        jobs = [(sinks[i % len(sinks)].name, message(seed, i, size)) for i in range(n)]
        at = len(relay.log)
        got, _ = await loadgen.run_deliveries(lmtp, jobs, 1)
        tally.errors += got.errors
        tally.samples += got.samples
        # The last delivery's share of the log, for a look at where its round trips go.
        out.extra["db_delivery_turns_sample"] = relay.log[at:][-DELIVERY_SAMPLE:]

    before = db.statements()
    windows: list[list[list[str]]] = []

    async def logins() -> None:
        windows.extend(await _logins(pop3, users, n, tally, relay))

    per_login = await _turns(relay, rate, n, logins)
    _per(db, before, n, out, "login")
    waited = [[t for t in w if not background(t)] for w in windows]
    out.extra["db_open_turns_sample"] = windows[-1] if windows else []
    # How often each sequence of waited-for turns occurred (each turn by its first statement).
    shapes: dict[str, int] = {}
    for w in waited:
        shape = " | ".join(_first(t) for t in w)
        shapes[shape] = shapes.get(shape, 0) + 1
    out.extra["db_open_turns_waited"] = shapes
    return {
        # USER to PASS's +OK: the turns a login waited for (the background writers' turns in
        # the same window left out; all of them in _all). The median login: a sweep's
        # transaction (collector, queue) that happens to fall in one window is not the
        # login's, and a change on the login path moves every login.
        "db_round_trips_per_open": statistics.median(map(len, waited)) if waited else 0.0,
        "db_round_trips_per_open_mean": sum(map(len, waited)) / max(1, len(waited)),
        "db_round_trips_per_open_all": sum(map(len, windows)) / max(1, len(windows)),
        "db_round_trips_per_login": per_login,
        "db_round_trips_per_session": await _turns(relay, rate, n, sessions),
        "db_round_trips_per_delivery": await _turns(relay, rate, n, deliveries),
        "db_idle_round_trips_per_s": rate,
    }
