"""Counters shared by worker processes (cgpop/shared.py): limits hold across forked processes
that race for the same key, and the table reuses room once keys stop counting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cgpop.shared import SharedCounters, TableFull


def test_limit_and_release() -> None:
    counters = SharedCounters(slots=8)
    assert counters.try_add("10.0.0.1", 2)
    assert counters.try_add("10.0.0.1", 2)
    assert not counters.try_add("10.0.0.1", 2)
    assert counters.try_add("10.0.0.2", 2)
    counters.remove("10.0.0.1")
    assert counters.get("10.0.0.1") == 1
    assert counters.try_add("10.0.0.1", 2)
    counters.remove("never-added")
    assert counters.get("never-added") == 0
    assert counters.try_add("unlimited", None)


def test_keys_that_stopped_counting_make_room() -> None:
    counters = SharedCounters(slots=8)
    for round_ in range(50):
        key = f"peer-{round_}"
        assert counters.try_add(key, None)
        counters.remove(key)
    for i in range(3):
        assert counters.try_add(f"live-{i}", None)
    assert [counters.get(f"live-{i}") for i in range(3)] == [1, 1, 1]
    with pytest.raises(TableFull):
        for i in range(3, 10):
            counters.try_add(f"live-{i}", None)


# Four forked processes race for one key with a limit of 50, and each adds 500 to another.
RACE = r"""
import os
from cgpop.shared import SharedCounters
c = SharedCounters(slots=64)
pids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        won = sum(c.try_add("busy", 50) for _ in range(100))
        for _ in range(500):
            c.try_add("total", None)
        os._exit(won)
    pids.append(pid)
won = sum(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids)
print(won, c.get("busy"), c.get("total"))
"""


def test_limit_holds_across_forked_processes() -> None:
    done = subprocess.run(
        [sys.executable, "-c", RACE], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["50", "50", "2000"]


def test_server_counters_limit_the_sum_and_forget_a_reset_worker() -> None:
    from cgpop.shared import ServerCounters

    counters = ServerCounters(2, slots=8)
    first, second = counters.for_worker(0), counters.for_worker(1)
    assert first.try_add("ip 10.0.0.1", 3)
    assert second.try_add("ip 10.0.0.1", 3)
    assert first.try_add("ip 10.0.0.1", 3)
    assert not second.try_add("ip 10.0.0.1", 3)  # three in all, whichever worker asks
    assert second.get("ip 10.0.0.1") == 3
    first.reset()  # worker 0 died: its two went with it
    assert counters.total("ip 10.0.0.1") == 1
    assert second.try_add("ip 10.0.0.1", 3)


def test_snapshot_holds_give_the_oldest_of_all_workers() -> None:
    from cgpop.shared import SnapshotHolds

    holds = SnapshotHolds(3)
    assert holds.oldest() is None
    holds.slot(0).publish(200.0)
    holds.slot(2).publish(100.0)
    assert holds.slot(1).oldest() == 100.0
    holds.slot(2).publish(None)  # its sessions ended
    assert holds.oldest() == 200.0
