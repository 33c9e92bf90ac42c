"""Counters shared by the worker processes of one server (issue 14): channels in use in total,
per client address and per account, so `max_channels`, `max_per_ip` and `max_per_account` hold
for the whole server however many workers accept connections.

The table lives in anonymous shared memory created by the parent before it forks, so every
worker inherits the same pages; a process-shared semaphore (`multiprocessing.Lock`) serialises
updates. It costs one uncontended lock and a hash per connection and per login, far below what
a login costs anyway. With a single process the same table simply lives in that process.

Layout: open addressing with linear probing over `slots` entries of 16 bytes, an 8-byte key
digest and an 8-byte signed count. A 64-bit BLAKE2b digest stands in for the key; a collision
would merge two keys' counts (with 2**64 values and at most `slots` keys, not a practical risk).
Keys whose count fell to zero stay in place so probe chains stay intact; once half the slots
hold keys, the table is rebuilt in place with only the keys still counting.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import multiprocessing
import struct
from multiprocessing.synchronize import Lock

from cgpop.penalty import Record

__all__ = [
    "Heartbeats",
    "ServerCounters",
    "SharedBook",
    "SharedCounters",
    "SnapshotHolds",
    "WorkerCounts",
]

_ENTRY = struct.Struct("=Qq")
_EMPTY = 0  # digest 0 marks an empty slot; a real key's digest is never 0 (see _digest)


def _digest(key: str) -> int:
    value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return value or 1


class TableFull(Exception):
    """More distinct keys hold channels at once than the table has room for."""


class SharedCounters:
    def __init__(self, slots: int = 1 << 16, lock: Lock | None = None) -> None:
        if slots < 2 or slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        self.slots = slots
        self._mem = mmap.mmap(-1, slots * _ENTRY.size + 8)  # +8: count of keys in use
        self._lock = multiprocessing.get_context("fork").Lock() if lock is None else lock

    # --- the operations ---
    def try_add(self, key: str, limit: int | None) -> bool:
        """Count one more for `key` unless that would pass `limit` (None: no limit)."""
        digest = _digest(key)
        with self._lock:
            slot = self._find(digest, insert=True)
            assert slot is not None  # insert=True always gives a slot or raises
            count = self._count(slot)
            if limit is not None and count >= limit:
                return False
            self._write(slot, digest, count + 1)
            return True

    def remove(self, key: str) -> None:
        """Count one less for `key` (a channel closed); never below zero."""
        digest = _digest(key)
        with self._lock:
            slot = self._find(digest, insert=False)
            if slot is not None:
                self._write(slot, digest, max(0, self._count(slot) - 1))

    def get(self, key: str) -> int:
        with self._lock:
            slot = self._find(_digest(key), insert=False)
            return 0 if slot is None else self._count(slot)

    def close(self) -> None:
        self._mem.close()

    # --- the table ---
    def _count(self, slot: int) -> int:
        return int(_ENTRY.unpack_from(self._mem, slot * _ENTRY.size)[1])

    def _write(self, slot: int, digest: int, count: int) -> None:
        _ENTRY.pack_into(self._mem, slot * _ENTRY.size, digest, count)

    def _used(self) -> int:
        return int.from_bytes(self._mem[-8:], "little")

    def _set_used(self, used: int) -> None:
        self._mem[-8:] = used.to_bytes(8, "little")

    def _find(self, digest: int, *, insert: bool) -> int | None:
        """The slot holding `digest`; with `insert`, claim an empty one for it if absent."""
        mask = self.slots - 1
        slot = digest & mask
        for _ in range(self.slots):
            held, _count = _ENTRY.unpack_from(self._mem, slot * _ENTRY.size)
            if held == digest:
                return slot
            if held == _EMPTY:
                if not insert:
                    return None
                if 2 * (self._used() + 1) > self.slots:
                    self._rebuild()
                    return self._find(digest, insert=True)  # room again now
                self._write(slot, digest, 0)
                self._set_used(self._used() + 1)
                return slot
            slot = (slot + 1) & mask
        raise TableFull("shared counter table full")

    def _rebuild(self) -> None:
        """Keep only the keys still counting (called with the lock held)."""
        live = []
        for slot in range(self.slots):
            digest, count = _ENTRY.unpack_from(self._mem, slot * _ENTRY.size)
            if digest != _EMPTY and count > 0:
                live.append((digest, count))
        if 2 * (len(live) + 1) > self.slots:
            raise TableFull("shared counter table full")
        self._mem[: self.slots * _ENTRY.size] = bytes(self.slots * _ENTRY.size)
        self._set_used(0)
        mask = self.slots - 1
        for digest, count in live:
            slot = digest & mask
            while _ENTRY.unpack_from(self._mem, slot * _ENTRY.size)[0] != _EMPTY:
                slot = (slot + 1) & mask
            self._write(slot, digest, count)
        self._set_used(len(live))


class ServerCounters:
    """The counts of a whole server of `workers` processes: one SharedCounters table per worker
    under one lock, so a limit holds for the sum while each worker's share stays its own. A
    worker that dies takes its connections with it; its replacement starts by zeroing its
    table (`for_worker(i).reset()`), so the dead worker's counts do not hold slots forever.
    Create it in the parent before forking."""

    def __init__(self, workers: int, slots: int = 1 << 16) -> None:
        self._lock = multiprocessing.get_context("fork").Lock()
        self.tables = [SharedCounters(slots, self._lock) for _ in range(workers)]

    def for_worker(self, index: int) -> WorkerCounts:
        return WorkerCounts(self, index)

    def total(self, key: str) -> int:
        with self._lock:
            return self._total(_digest(key))

    def _total(self, digest: int) -> int:
        found = 0
        for table in self.tables:
            slot = table._find(digest, insert=False)
            if slot is not None:
                found += table._count(slot)
        return found


class WorkerCounts:
    """One worker's side of ServerCounters: what it adds and removes counts in its own table,
    and limits are checked against the whole server's sum."""

    def __init__(self, counters: ServerCounters, index: int) -> None:
        self.counters, self.table = counters, counters.tables[index]

    def try_add(self, key: str, limit: int | None) -> bool:
        digest = _digest(key)
        with self.counters._lock:
            if limit is not None and self.counters._total(digest) >= limit:
                return False
            slot = self.table._find(digest, insert=True)
            assert slot is not None
            self.table._write(slot, digest, self.table._count(slot) + 1)
            return True

    def remove(self, key: str) -> None:
        digest = _digest(key)
        with self.counters._lock:
            slot = self.table._find(digest, insert=False)
            if slot is not None:
                self.table._write(slot, digest, max(0, self.table._count(slot) - 1))

    def get(self, key: str) -> int:
        """The whole server's count for `key`."""
        return self.counters.total(key)

    def reset(self) -> None:
        """A new worker in this slot: what its predecessor counted went with its process."""
        with self.counters._lock:
            mem = self.table._mem
            mem[:] = bytes(len(mem))


_HOLD = struct.Struct("=d")


class SnapshotHolds:
    """The oldest open snapshot of each worker (issue 14), so the store's collector in one
    worker keeps every expunged copy a session in another worker may still read. Each worker
    publishes its own slot (a float: the time its oldest open snapshot was taken, +inf when it
    has none); `oldest()` is the minimum over all. One aligned 8-byte store per update, read
    without a lock: a reader sees the old or the new value, and both are safe (see the SQLite
    store's collect). A replacement worker overwrites its dead predecessor's slot at start.
    Create it in the parent before forking."""

    def __init__(self, workers: int) -> None:
        self._mem = mmap.mmap(-1, workers * _HOLD.size)
        self.workers = workers
        for i in range(workers):
            _HOLD.pack_into(self._mem, i * _HOLD.size, math.inf)

    def slot(self, index: int) -> HoldSlot:
        return HoldSlot(self, index)

    def oldest(self) -> float | None:
        found = min(_HOLD.unpack_from(self._mem, i * _HOLD.size)[0] for i in range(self.workers))
        return None if found == math.inf else float(found)


class HoldSlot:
    """One worker's slot of SnapshotHolds: the store.api.HoldBoard the SQLite store is given."""

    def __init__(self, holds: SnapshotHolds, index: int) -> None:
        self.holds, self.offset = holds, index * _HOLD.size

    def publish(self, oldest: float | None) -> None:
        _HOLD.pack_into(self.holds._mem, self.offset, math.inf if oldest is None else oldest)

    def oldest(self) -> float | None:
        return self.holds.oldest()


_BEAT = struct.Struct("=d")


class Heartbeats:
    """When each worker's event loop last ran its heartbeat (time.monotonic(), CLOCK_MONOTONIC,
    one clock for every process of the machine), so the parent pings systemd's watchdog only
    while every worker's loop runs (cgpop/workers.py). One aligned 8-byte store per beat, read
    without a lock: an old or a new value, either is a time the worker really beat. A slot
    starts at 0 (never beaten); the parent compares it with the worker's start time. Create it
    in the parent before forking."""

    def __init__(self, workers: int) -> None:
        self._mem = mmap.mmap(-1, workers * _BEAT.size)

    def beat(self, index: int, now: float) -> None:
        _BEAT.pack_into(self._mem, index * _BEAT.size, now)

    def last(self, index: int) -> float:
        return float(_BEAT.unpack_from(self._mem, index * _BEAT.size)[0])


_RECORD = struct.Struct("=Qqdd")  # owner digest, count, last failure, next turn
_SHARED = 1  # owner digest of a record holding the failures of more than one key


class SharedBook:
    """The failed-login penalty's records (cgpop/penalty.py) for all workers of one server
    (issue 14), so an address spreading its guesses over every worker gets no more checks than
    from one process. Create it in the parent before forking.

    A fixed table of `slots` records of 32 bytes (2**17 slots: 4 MiB) in anonymous shared
    memory, under a process-shared lock (the penalty takes it around each whole operation).
    Each key hashes (64-bit BLAKE2b) to one slot; no probing, no eviction, so memory never
    grows. The rule on collisions: a collision may only make the penalty stricter, never let
    anyone through faster.
    - Reads ignore who owns a slot: a key sees the failures of every key sharing its slot.
    - A failure written over a live record of another key merges the two (the penalty adds
      its failure to the count it read) and marks the slot shared.
    - A success clears a slot only when it holds that key's failures alone (its own digest);
      a shared slot stays until it has decayed, then any key may take it again.
    A record that has fully decayed is emptied by whoever reads it, so slots are reused.
    With k keys failing at once, a given key collides with probability about k / slots."""

    def __init__(self, slots: int = 1 << 17) -> None:
        if slots < 2 or slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        self.slots = slots
        self._mem = mmap.mmap(-1, slots * _RECORD.size)
        self._lock = multiprocessing.get_context("fork").Lock()

    def locked(self) -> Lock:
        return self._lock

    def _slot(self, key: str) -> tuple[int, int]:
        digest = _digest(key)
        if digest == _SHARED:
            digest = 2  # 0 and 1 are markers; 2 sharing a digest is only a collision
        return digest, (digest & (self.slots - 1)) * _RECORD.size

    def get(self, key: str) -> Record | None:
        offset = self._slot(key)[1]
        owner, count, last, ready = _RECORD.unpack_from(self._mem, offset)
        return None if owner == _EMPTY else Record(int(count), float(last), float(ready))

    def put(self, key: str, record: Record) -> None:
        digest, offset = self._slot(key)
        owner = _RECORD.unpack_from(self._mem, offset)[0]
        if owner not in (_EMPTY, digest):
            digest = _SHARED  # another key's live record: merged by the caller's count
        _RECORD.pack_into(self._mem, offset, digest, record.count, record.last, record.ready)

    def drop(self, key: str) -> None:
        # Fully decayed for every key sharing the slot: nothing of anyone's is lost.
        offset = self._slot(key)[1]
        self._mem[offset : offset + _RECORD.size] = bytes(_RECORD.size)

    def clear(self, key: str) -> None:
        digest, offset = self._slot(key)
        if _RECORD.unpack_from(self._mem, offset)[0] == digest:
            self._mem[offset : offset + _RECORD.size] = bytes(_RECORD.size)

    def trim(self, max_keys: int) -> None:
        """Nothing to do: the table has a fixed size."""

    def __len__(self) -> int:
        """Slots holding a record."""
        return sum(
            1
            for i in range(self.slots)
            if _RECORD.unpack_from(self._mem, i * _RECORD.size)[0] != _EMPTY
        )

    def close(self) -> None:
        self._mem.close()
