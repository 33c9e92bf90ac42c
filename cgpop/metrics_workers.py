"""One /metrics for a server of several worker processes (issue 14, `[server] workers`).

prometheus_client's multiprocess mode carries the library's metrics (logins, handshakes,
refusals, LMTP recipients, XTND submissions, store call times, the queue gauges): the parent
makes a private, empty directory and names it in PROMETHEUS_MULTIPROC_DIR before any worker
creates a metric; every process then keeps its values in files there, and the process serving
/metrics (worker 0) reads all of them with MultiProcessCollector, which sums counters and
histograms over processes, dead ones included (a counter never goes back when a worker is
replaced). Live gauges follow their `multiprocess_mode` (cgpop/metrics.py); the supervisor
calls `mark_process_dead` for each worker it reaps, and the parent removes the directory at
stop.

The per-command numbers (cgpop_pop3_commands_total, cgpop_pop3_command_seconds,
cgpop_pop3_sent_bytes_total) are not the library's objects: issue 12 keeps them as plain numbers
on the event loop (a library update takes a lock, and in multiprocess mode also a file write,
per command). Here they are plain numbers in shared memory: each worker owns one block
(ctypes arrays over an anonymous mmap made before the fork, updated by that worker's loop
only), and the scrape sums the blocks. A replacement worker carries on from its predecessor's
block, so these totals never go back either. cgpop_pop3_sessions is the whole server's count of
open POP3 connections, already kept in shared memory for `max_channels` (cgpop.shared).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from prometheus_client import values
from prometheus_client.multiprocess import mark_process_dead

from cgpop.metrics import COMMAND_BUCKETS, VERBS, CommandStats, Metrics

__all__ = ["MultiprocessDir", "ServerCommandStats", "WorkerCommandStats", "worker_metrics"]

_ENV = "PROMETHEUS_MULTIPROC_DIR"
_BUCKETS = len(COMMAND_BUCKETS)
# One worker's block: bucket counts per verb (int64), time sums per verb (double), octets sent.
_BLOCK = 8 * (len(VERBS) * _BUCKETS + len(VERBS) + 1)


class WorkerCommandStats(CommandStats):
    """CommandStats whose numbers are one worker's block of shared memory."""

    __slots__ = ("_sent",)

    def __init__(self, mem: mmap.mmap, offset: int) -> None:  # no super(): no lists
        self.buckets = [
            (ctypes.c_int64 * _BUCKETS).from_buffer(mem, offset + 8 * _BUCKETS * i)
            for i in range(len(VERBS))
        ]
        offset += 8 * _BUCKETS * len(VERBS)
        self.sums = (ctypes.c_double * len(VERBS)).from_buffer(mem, offset)
        self._sent = ctypes.c_int64.from_buffer(mem, offset + 8 * len(VERBS))

    @property
    def sent_bytes(self) -> int:
        return int(self._sent.value)

    @sent_bytes.setter
    def sent_bytes(self, value: int) -> None:
        self._sent.value = value


class ServerCommandStats:
    """The per-command numbers of every worker. Create it in the parent before forking."""

    def __init__(self, workers: int) -> None:
        self.mem = mmap.mmap(-1, workers * _BLOCK)
        self.blocks = [WorkerCommandStats(self.mem, i * _BLOCK) for i in range(workers)]

    def for_worker(self, index: int) -> WorkerCommandStats:
        return self.blocks[index]

    def total(self) -> CommandStats:
        """The sum over the workers, as one process's numbers."""
        total = CommandStats()
        buckets: list[Any] = list(total.buckets)
        for block in self.blocks:
            for i in range(len(VERBS)):
                row = list(block.buckets[i])  # a copy: the worker may count on meanwhile
                buckets[i] = [a + b for a, b in zip(buckets[i], row, strict=True)]
                total.sums[i] += block.sums[i]
            total.sent_bytes += block.sent_bytes
        total.buckets = buckets
        return total


class MultiprocessDir:
    """prometheus_client's multiprocess directory for one server run: made empty and private
    (mkdtemp: mode 0700) and named in the environment before the workers are forked, so each
    worker's metrics are file-backed; removed at stop."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="cgpop-metrics-")
        self._before = os.environ.get(_ENV)
        os.environ[_ENV] = self.path
        # The library picks its value class when first imported (cgpop.metrics is imported
        # before the configuration is read); pick again now that the directory is named.
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]

    def process_dead(self, pid: int) -> None:
        """A worker was reaped: drop its live gauges (counters stay counted)."""
        mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]

    def remove(self) -> None:
        if self._before is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = self._before
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        shutil.rmtree(self.path, ignore_errors=True)


def worker_metrics(
    stats: ServerCommandStats, index: int, directory: str, sessions: Callable[[], int]
) -> Callable[[Callable[[], int]], Metrics]:
    """What worker `index` builds its Metrics with: its own block of the per-command numbers,
    the server's totals and open sessions for the scrape (the process-local `_sessions` the
    gateway offers is not the whole server's), and the library's metrics in `directory`."""

    def make(_sessions: Callable[[], int]) -> Metrics:
        return Metrics(
            sessions,
            stats=stats.for_worker(index),
            totals=stats.total,
            multiprocess_dir=directory,
        )

    return make
