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
from dataclasses import dataclass

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
