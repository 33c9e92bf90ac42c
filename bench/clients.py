"""`--clients N`: the load client split over N processes, so it is not the bottleneck.

Each process is `python -m bench.clients`, started before the timed block. It reads one JSON
job on stdin, prepares, says `{"ready": ...}`, and waits for `go`; the harness starts the clock
when every process is ready and stops it when the last one has answered `{"done": ...}` with
its tally and its own CPU seconds (getrusage), which the Meter adds to the client's CPU.
The idle job answers `{"held": ...}` once its sessions are logged in and waits for `release`
before it closes them, so the harness can measure the server while they are held.

Jobs: `sessions` (plain, pipelined, implicit TLS, STLS; `resume` runs the resuming TLS client
of tlsresume.py in threads), `delivery` (LMTP), `idle`. The children use uvloop when it is
installed (a cheaper client); their tallies are merged into the harness's, and the UIDL/LIST
stability check spans all processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import certs, loadgen, tlsresume
from bench.dataset import User, message
from bench.loadgen import Tally, Transport

READ_LIMIT = 256 * 1024 * 1024  # one result line carries the UIDL/LIST of every user


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def tally_to_json(t: Tally) -> dict[str, Any]:
    return {
        "sessions": t.sessions,
        "errors": t.errors,
        "in_use_retries": t.in_use_retries,
        "retr_bytes": t.retr_bytes,
        "samples": t.samples,
        "latencies": t.latencies,
        "listings": {
            u: [[x.decode("latin-1") for x in uidls], sizes]
            for u, (uidls, sizes) in t.listings.items()
        },
    }


def merge(into: Tally, part: dict[str, Any]) -> None:
    """Add a child's tally to the harness's; a listing that differs from one seen elsewhere
    (another process, an earlier run) is a failed check."""
    into.sessions += part["sessions"]
    into.in_use_retries += part["in_use_retries"]
    into.retr_bytes += part["retr_bytes"]
    into.latencies += part["latencies"]
    for s in part["samples"]:
        into.fail(s)
    into.errors += part["errors"] - len(part["samples"])
    for user, (uidls, sizes) in part["listings"].items():
        pair = ([x.encode("latin-1") for x in uidls], list(sizes))
        if into.listings.setdefault(user, pair) != pair:
            into.fail(f"{user}: UIDL/LIST differ between client processes")


def split(total: int, parts: int) -> list[int]:
    """`total` as `parts` near-equal shares, larger first (sums to total)."""
    q, r = divmod(total, parts)
    return [q + (1 if i < r else 0) for i in range(parts)]


# ---------------------------------------------------------------------------------------------
# Harness side


@dataclass(slots=True)
class Child:
    proc: asyncio.subprocess.Process

    async def send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        await self.proc.stdin.drain()

    async def expect(self, key: str) -> Any:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            await self.proc.wait()
            raise RuntimeError(f"client process exited ({self.proc.returncode}) before {key!r}")
        msg = json.loads(line)
        if key not in msg:
            raise RuntimeError(f"client process said {msg!r}, expected {key!r}")
        return msg[key]


class Pool:
    """N client processes running one job each, started and released together."""

    def __init__(self, jobs: Sequence[dict[str, Any]]) -> None:
        self.jobs = list(jobs)
        self.children: list[Child] = []
        self.cpu_s: list[float] = []

    async def start(self) -> None:
        for job in self.jobs:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.clients",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=READ_LIMIT,
                cwd=str(Path(__file__).resolve().parent.parent),
            )
            child = Child(proc)
            await child.send(job)
            self.children.append(child)
        await asyncio.gather(*(c.expect("ready") for c in self.children))

    async def go(self) -> None:
        await asyncio.gather(*(c.send("go") for c in self.children))

    async def expect_all(self, key: str) -> list[Any]:
        return list(await asyncio.gather(*(c.expect(key) for c in self.children)))

    async def release(self) -> None:
        await asyncio.gather(*(c.send("release") for c in self.children))

    async def finish(self, into: Tally) -> None:
        done = await self.expect_all("done")
        for d in done:
            merge(into, d["tally"])
            self.cpu_s.append(d["cpu_s"])
        await self.close()

    async def close(self) -> None:
        for c in self.children:
            if c.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.kill()
            await c.proc.wait()


def _users(users: Sequence[User]) -> list[list[str]]:
    return [[u.name, u.password] for u in users]


def sessions_jobs(
    t: Transport,
    cafile: Path | None,
    users: list[User],
    total: int,
    clients: int,
    processes: int,
    *,
    pipelined: bool = False,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """`total` sessions and `clients` connections split over `processes`; each process starts
    at a different user so they do not all queue on the first maildrop."""
    jobs = []
    for k, (n, c) in enumerate(
        zip(split(total, processes), split(clients, processes), strict=True)
    ):
        if n == 0:
            continue
        rot = users[k % len(users) :] + users[: k % len(users)]
        jobs.append(
            {
                "kind": "sessions",
                "port": t.port,
                "tls": t.tls is not None,
                "stls": t.stls,
                "cafile": str(cafile) if cafile else None,
                "users": _users(rot),
                "total": n,
                "clients": max(1, c),
                "pipelined": pipelined,
                "resume": resume,
            }
        )
    return jobs


async def run_jobs(jobs: list[dict[str, Any]], into: Tally) -> tuple[float, list[float]]:
    """Run the jobs to completion; returns (wall seconds from `go`, each process's CPU)."""
    pool = Pool(jobs)
    try:
        await pool.start()
        start = time.perf_counter()
        await pool.go()
        await pool.finish(into)
        return time.perf_counter() - start, pool.cpu_s
    finally:
        await pool.close()


# ---------------------------------------------------------------------------------------------
# Child side


def _context(job: dict[str, Any]) -> Any:
    return certs.client_context(Path(job["cafile"])) if job.get("tls") else None


async def _child_sessions(job: dict[str, Any], tally: Tally) -> dict[str, Any]:
    users = [User(n, p) for n, p in job["users"]]
    ctx = _context(job)
    if job["resume"]:
        res, wall = await asyncio.to_thread(
            tlsresume.run_sessions,
            job["port"],
            ctx,
            job["stls"],
            users,
            job["total"],
            job["clients"],
            tally,
        )
        return {"offered": res.offered, "reused": res.reused, "wall_s": wall}
    t = Transport(job["port"], ctx, job["stls"])
    _, wall = await loadgen.run_sessions(
        t, users, job["total"], job["clients"], pipelined=job["pipelined"], tally=tally
    )
    return {"wall_s": wall}


async def _child_delivery(job: dict[str, Any], tally: Tally) -> dict[str, Any]:
    seed, size = job["seed"], job["size"]
    jobs = [(rcpt, message(seed, i, size)) for rcpt, i in job["jobs"]]
    _, wall = await loadgen.run_deliveries(job["port"], jobs, job["senders"], tally)
    return {"wall_s": wall}


async def child(stdin: asyncio.StreamReader) -> None:
    def say(obj: Any) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    job = json.loads(await stdin.readline())
    tally = Tally()
    say({"ready": True})
    if (await stdin.readline()).strip() != b'"go"':
        return
    cpu0 = _cpu()
    extra: dict[str, Any] = {}
    if job["kind"] == "sessions":
        extra = await _child_sessions(job, tally)
    elif job["kind"] == "delivery":
        extra = await _child_delivery(job, tally)
    elif job["kind"] == "idle":
        users = [User(n, p) for n, p in job["users"]]
        t = Transport(job["port"])
        conns = await loadgen.open_idle(t, users, tally, job["concurrency"], job["sources"])
        say({"held": {"sessions": tally.sessions, "errors": tally.errors, "cpu_s": _cpu() - cpu0}})
        if (await stdin.readline()).strip() != b'"release"':
            return
        await loadgen.close_idle(conns, tally, job["concurrency"])
    say({"done": {"tally": tally_to_json(tally), "cpu_s": _cpu() - cpu0, **extra}})


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await child(reader)


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main())
    else:
        uvloop.run(_main())


if __name__ == "__main__":
    main()
