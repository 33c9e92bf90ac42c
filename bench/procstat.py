"""CPU time and memory of a server's whole process tree, read from /proc.

CPU: for every live process in the tree, utime+stime+cutime+cstime. A descendant that has exited
and been reaped is counted once, in the c-fields of the live ancestor that waited for it, so the
sum covers Dovecot's short-lived login and mail processes as well as cgpop's single process.
Memory: the sum of VmRSS (over-counts shared pages across Dovecot's processes) and the sum of Pss
from smaps_rollup (each shared page divided among its users: the honest total).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class TreeSample:
    pids: int
    cpu_s: float
    rss_bytes: int
    pss_bytes: int


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """The root and all its descendants (one pass over /proc building the parent map)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # stat(5) fields 14-17 (utime, stime, cutime, cstime); fields[] starts at field 3.
        ticks += sum(int(x) for x in fields[11:15])
    return ticks / CLK_TCK


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def sample(root: int, *, pss: bool = True) -> TreeSample:
    pids = tree_pids(root)
    return TreeSample(
        pids=len(pids),
        cpu_s=cpu_seconds(pids),
        rss_bytes=sum(_rss(p) for p in pids),
        pss_bytes=sum(_pss(p) for p in pids) if pss else 0,
    )


class PeakRss:
    """Samples the tree's summed RSS in a thread until stopped; keeps the maximum.

    A thread, not an asyncio task, so a busy event loop in the load generator does not skew the
    sampling interval. The pid list is re-read at every sample (about 1.5 ms with a few hundred
    processes): Dovecot forks a mail process at login, and a short RETR must not miss it."""

    def __init__(self, root: int, interval: float = 0.01) -> None:
        self.root = root
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(_rss(p) for p in tree_pids(self.root)))
            self._stop.wait(self.interval)


# ---------------------------------------------------------------------------------------------
# What saturated: per-process CPU of server and client, all cores, the disk (issue 14, section 2)

# A process is taken as saturated from this share of one core on: an event loop (cgpop, the
# load client) cannot use more than one core, and scheduling noise keeps it a little under.
PROCESS_SATURATED = 0.85
# The machine is saturated when its cores are this busy (everything on it: the host is shared).
MACHINE_SATURATED = 0.90
# The disk holding the run directory is saturated when busy (io_ticks) this share of the time.
DISK_SATURATED = 0.80


def own_cpu(pids: list[int]) -> dict[int, float]:
    """Each process's own utime+stime in seconds (children not included)."""
    out: dict[int, float] = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def comm(pid: int) -> str:
    """The process's command name (/proc/pid/comm), '?' once it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def by_name(delta: dict[int, float], wall: float) -> dict[str, float]:
    """Cores per command name (Dovecot's auth, pop3-login, pop3...), busiest first."""
    out: dict[str, float] = {}
    for pid, cpu in delta.items():
        name = comm(pid)
        out[name] = out.get(name, 0.0) + cpu / wall
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def machine_busy_s() -> float:
    """Non-idle CPU seconds over all cores since boot (/proc/stat; iowait counts as idle)."""
    with open("/proc/stat", "rb") as f:
        cols = [int(x) for x in f.readline().split()[1:9]]
    return (sum(cols) - cols[3] - cols[4]) / CLK_TCK


def disk_io_ms(path: str) -> int | None:
    """Milliseconds the block device holding `path` has spent doing I/O (diskstats field 13)."""
    dev = os.stat(path).st_dev
    major, minor = os.major(dev), os.minor(dev)
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                p = line.split()
                if int(p[0]) == major and int(p[1]) == minor:
                    return int(p[12])
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass(frozen=True, slots=True)
class Usage:
    """Resource use over one block of work; CPU figures are in cores (seconds per second)."""

    wall_s: float
    server_cores: float  # the server's whole tree, reaped children included
    server_busiest: float  # the busiest single server process
    client_cores: float  # every load-client process together
    client_busiest: float  # the busiest single client process
    client_processes: int
    machine_cores: float  # all cores of the machine, everyone's work included
    nproc: int
    disk_util: float | None  # share of the wall time the run directory's disk was busy
    # The server's own CPU (reaped children not included) per command name, in cores.
    server_by_name: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {f: getattr(self, f) for f in self.__slots__}


def combine(parts: list[Usage]) -> Usage:
    """Several blocks of the same kind as one (CPU and busy time over the summed wall time):
    short blocks, such as one 50 MB RETR, are within a few clock ticks of /proc's resolution."""
    wall = sum(u.wall_s for u in parts) or 1e-9

    def avg(f: str) -> float:
        return sum(getattr(u, f) * u.wall_s for u in parts) / wall

    disks = [u.disk_util for u in parts]
    return Usage(
        wall_s=wall,
        server_cores=avg("server_cores"),
        server_busiest=avg("server_busiest"),
        client_cores=avg("client_cores"),
        client_busiest=avg("client_busiest"),
        client_processes=max(u.client_processes for u in parts),
        machine_cores=avg("machine_cores"),
        nproc=parts[0].nproc,
        disk_util=None if None in disks else avg("disk_util"),
        server_by_name=_sum_names(parts, wall),
    )


def _sum_names(parts: list[Usage], wall: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for u in parts:
        for name, cores in u.server_by_name.items():
            out[name] = out.get(name, 0.0) + cores * u.wall_s / wall
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def saturated(u: Usage) -> list[str]:
    """What limited the block, most specific first; empty when nothing was at its limit."""
    out = []
    if u.server_busiest >= PROCESS_SATURATED:
        out.append(f"server CPU (busiest process {u.server_busiest:.2f} core)")
    if u.client_busiest >= PROCESS_SATURATED:
        out.append(
            f"client CPU (busiest of {u.client_processes} process"
            f"{'es' if u.client_processes != 1 else ''} {u.client_busiest:.2f} core)"
        )
    if u.machine_cores >= MACHINE_SATURATED * u.nproc:
        out.append(f"all cores ({u.machine_cores:.2f} of {u.nproc})")
    if u.disk_util is not None and u.disk_util >= DISK_SATURATED:
        out.append(f"disk ({100 * u.disk_util:.0f}% busy)")
    return out


def verdict(u: Usage) -> str:
    """One line for the report: what saturated, or that nothing did (latency-bound)."""
    found = saturated(u)
    if not found:
        return (
            f"nothing saturated (server {u.server_cores:.2f}, client {u.client_cores:.2f} of "
            f"{u.nproc} cores): latency-bound"
        )
    return "; ".join(found)
