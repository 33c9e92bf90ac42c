"""The workers supervisor (cgpop/workers.py) from the outside: a parent process that opened a
socket forks two workers sharing it; connections reach both, a killed worker is replaced, SIGHUP
reaches every worker, SIGTERM drains them and the parent exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cgpop import config as configmod
from cgpop.prefork import listen_key, open_listeners
from cgpop.streams import UnixSocketFile
from cgpop.workers import worker_count

# A worker answers each connection with its pid, after a short blocking pause so that the
# other worker takes the next connections; SIGHUP leaves a file named after the worker's pid.
PROGRAM = r"""
import asyncio, os, signal, socket, sys, time
from cgpop.workers import Supervisor

sock = socket.create_server(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
marks = sys.argv[1]

def work(index: int) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(
            signal.SIGHUP, lambda: open(os.path.join(marks, str(os.getpid())), "w").close()
        )

        async def handle(reader, writer):
            time.sleep(0.02)
            writer.write(f"{os.getpid()}\n".encode())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        await stop.wait()
        server.close()

    asyncio.run(main())
    return 0

sys.exit(Supervisor(2, work, grace=2.0).run())
"""

TIMEOUT = 20.0


def ask(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), TIMEOUT) as conn:
        conn.settimeout(TIMEOUT)
        with conn.makefile() as f:
            return int(f.readline())


def until(predicate: Callable[[], bool], what: str) -> None:
    # The supervisor's children give no other signal of progress: poll, bounded.
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def both_workers(port: int) -> set[int]:
    seen: set[int] = set()

    def more() -> bool:
        seen.add(ask(port))
        return len(seen) == 2

    until(more, "connections answered by both workers")
    return seen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, str(marks)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    try:
        yield proc, port, marks
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)
        proc.stdout.close()


def test_workers_share_the_socket_and_a_dead_one_is_replaced(
    supervised: tuple[subprocess.Popen[str], int, Path],
) -> None:
    proc, port, _ = supervised
    seen = both_workers(port)
    assert os.getpid() not in seen
    victim = min(seen)
    os.kill(victim, signal.SIGKILL)
    fresh: set[int] = set()

    def replaced() -> bool:
        fresh.add(ask(port))
        return bool(fresh - seen)

    until(replaced, "a replacement worker")
    assert victim not in fresh
    assert proc.poll() is None


def test_sighup_reaches_every_worker_and_sigterm_drains_them(
    supervised: tuple[subprocess.Popen[str], int, Path],
) -> None:
    proc, port, marks = supervised
    pids = both_workers(port)
    proc.send_signal(signal.SIGHUP)
    until(lambda: {int(p.name) for p in marks.iterdir()} == pids, "SIGHUP in both workers")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert not any(alive(pid) for pid in pids)


def test_worker_count() -> None:
    assert worker_count(3) == 3
    assert worker_count("auto") == len(os.sched_getaffinity(0))


class Beats:
    def __init__(self) -> None:
        self.at: dict[int, float] = {}

    def last(self, index: int) -> float:
        return self.at.get(index, 0.0)


class Told:
    """A Notify that records what the supervisor tells the service manager."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def ready(self, status: str = "") -> bool:
        self.said.append("READY=1")
        return True

    def reloading(self) -> bool:
        return True

    def reloaded(self, status: str = "") -> bool:
        return True

    def stopping(self) -> bool:
        return True

    def ping(self) -> bool:
        self.said.append("WATCHDOG=1")
        return True


def test_the_watchdog_is_pinged_only_while_every_worker_is_healthy() -> None:
    """The rule of cgpop/workers.py, without forking: the parent pings once per interval while
    each worker beats (or is starting, or is being replaced), and not when one is stuck, hung
    at start, or keeps dying at start. Times are given, not waited for."""
    from cgpop.workers import Supervisor

    beats, told = Beats(), Told()
    sup = Supervisor(2, lambda index: 0, grace=1.0, notify=told, watchdog=1.0, beats=beats)
    try:
        now = 1000.0
        for slot in sup.slots:
            slot.pid, slot.started = 100 + slot.index, now - 5.0
        sup.announced = True
        beats.at = {0: now - 0.5, 1: now - 1.5}
        assert sup._healthy(now)
        beats.at[1] = now - 2.5  # worker 1's loop has not run for two intervals: stuck
        assert not sup._healthy(now)
        beats.at[1] = 0.0  # a fresh worker still starting
        sup.slots[1].started = now - 10.0
        assert sup._healthy(now)
        sup.slots[1].started = now - 31.0  # a start that hangs
        assert not sup._healthy(now)
        sup.slots[1].pid = 0  # died; being replaced
        sup.slots[1].failures = 2
        assert sup._healthy(now)
        sup.slots[1].failures = 3  # the third quick death in a row
        assert not sup._healthy(now)
        # The pings follow the rule, one per interval (now the real clock's).
        now = time.monotonic()
        sup.slots[1].failures = 0
        beats.at = {0: now, 1: now}
        sup._ping_due()
        sup._ping_due()  # within the interval: nothing more
        assert told.said == ["WATCHDOG=1"]
        sup._next_ping = 0.0
        sup.slots[1].failures = 3
        sup._ping_due()
        assert told.said == ["WATCHDOG=1"]
    finally:
        os.close(sup._ready_r)
        os.close(sup._ready_w)


def test_a_reaped_worker_is_reported() -> None:
    """The supervisor tells `reaped` each worker's pid as it collects it (the metrics'
    mark_process_dead), here a real child that exits at once."""
    from cgpop.workers import Supervisor

    ended: list[int] = []
    sup = Supervisor(1, lambda index: 0, grace=1.0, reaped=ended.append)
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        sup.slots[0].pid = pid
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not yet collected
        assert [s.index for s in sup._reap()] == [0]
        assert ended == [pid]
    finally:
        os.close(sup._ready_r)
        os.close(sup._ready_w)


def test_each_worker_gets_its_own_listeners_on_one_port(tmp_path: Path) -> None:
    """POP3 and LMTP over TCP: one socket per worker, SO_REUSEPORT, all on the port the first
    resolved from port 0 (the kernel then spreads connections evenly); the metrics listener
    and unix sockets are one, shared."""

    cfg = configmod.from_dict(
        {
            "server": {"data_dir": str(tmp_path / "data")},
            "pop3": {"listen": ["127.0.0.1:0"]},
            "lmtp": {"listen": ["127.0.0.1:0", f"unix:{tmp_path / 'lmtp.sock'}"]},
            "metrics": {"listen": "127.0.0.1:0"},
        },
        source="<test>",
    )
    files: list[UnixSocketFile] = []
    per_worker = open_listeners(cfg, files, 3)
    try:
        assert len(per_worker) == 3
        for kind in ("pop3", "lmtp"):
            key = listen_key(kind, cfg.pop3.listen[0] if kind == "pop3" else cfg.lmtp.listen[0])
            socks = [mine[key][0] for mine in per_worker]
            assert len({s.fileno() for s in socks}) == 3
            assert len({s.getsockname() for s in socks}) == 1
            assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in socks)
        unix_key = listen_key("lmtp", cfg.lmtp.listen[1])
        metrics_key = listen_key("metrics", cfg.metrics.listen)
        for key in (unix_key, metrics_key):
            assert len({mine[key][0].fileno() for mine in per_worker}) == 1
    finally:
        seen: set[int] = set()
        for mine in per_worker:
            for group in mine.values():
                for sock in group:
                    if id(sock) not in seen:
                        seen.add(id(sock))
                        sock.close()
        for file in files:
            file.remove()
