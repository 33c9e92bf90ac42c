"""Caching answers derived from the directory (routes, domains, accounts, mailboxes, rights).

Valid while the store's directory version is unchanged: one cheap read replaces the several
lookups a resolution takes (profiled: they were about half of LMTP delivery's CPU).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")

# Bounded: past this many entries the cache starts over (names are client-chosen input).
MAX_ENTRIES = 10_000


class DirectoryCache(Generic[V]):
    def __init__(self, version: Callable[[], int]) -> None:
        self.version = version
        self._entries: dict[Hashable, tuple[int, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], V], version: int | None = None) -> V:
        """The value for `key` at the directory's current version, or at `version` when the
        caller read it already (one read for all the lookups of one login: the database's
        round trips are the login's latency, issue 11). That version was read before
        `compute` runs, so the argument below holds for it too."""
        current = self.version() if version is None else version
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry[0] == current:
            return entry[1]
        # Computed after reading the version: a change committed meanwhile moves the version,
        # so at worst this value is recomputed on the next call, never served stale.
        value = compute()
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (current, value)
        return value

    def peek(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value cached for `key` whatever its version (no read of the version), else
        `get`. Only for answers that may lag a directory change by one use (the failed-login
        penalty's key: it names a delay bucket, it grants nothing)."""
        with self._lock:
            entry = self._entries.get(key)
        return entry[1] if entry is not None else self.get(key, compute)
