"""Failed-login delay per peer address, per account and per (address, account) pair, with
bounded memory. Pure: no sleeping, no I/O; the clock is injected (cgpop/loginturn.py waits).

Accounts are *resolved* accounts (`Authenticator.penalty_key`): `alice%example.com`,
`INBOX#alice` and `~alice/INBOX#alice` are one account, so spellings do not multiply guesses.

Two mechanisms (issue 10, defect 7: 100 connections of one address guessed 56 times faster than
one, because the delay was per reply):

* The turn, per (address, account) pair, shared by all the address's connections: password
  checks of one pair are made one at a time (cgpop/loginturn.py), each no earlier than
  `turn_wait` after the pair's last failure. So one address gets at most one check per
  `delay_for` seconds on one account (one per `maximum` once it has failed a few times),
  however many connections it opens. Only a success *by that address for that account*
  clears the pair. Concurrent correct logins (a client opening several sessions) are only
  serialised, never delayed: a pair without failures has no wait.
* The reply delay: after a failure the connection waits `delay_for` (the doubling delay of the
  larger of the address's, the account's and the pair's recent failures) before answering.
  The address's and the account's records are never cleared by a success (somebody else's
  success must not wipe an attacker's record); they decay. They delay failures only, so a
  flood against an account never delays its owner's correct login.

The delay doubles with each recent failure, from `base` up to `maximum`; one failure is
forgiven per `decay` seconds without new ones. The per-session failure budget (disconnect after
N) is the engine's, not this module's.

IPv6 peers are tracked per /64: one host usually owns the whole prefix (RFC 7421), so counting
single addresses would let it rotate past the penalty.

Where the records live is a `PenaltyBook`: `LocalBook` (a dict, the least recently failed
forgotten past `max_keys`) for a single process, or cgpop.shared.SharedBook, a fixed-size table
in shared memory, so all workers of one server (issue 14) count and space the same failures:
a check in one worker waits for the pair's turn whatever worker failed last. Every operation
reads and writes its records under the book's lock, so the sequence is atomic across workers.
Across workers one more rule: a check of a pair with failures *claims* its turn
(`claim_turn`), moving the pair's next turn to as if the check will fail, so another worker
does not start a check of the same pair at the same moment.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Protocol

# Count ceiling: enough to stay at the maximum delay while an attack lasts, small enough that
# an address forgets within max_count * decay once it stops.
DEFAULT_MAX_COUNT = 16


@dataclass(frozen=True, slots=True)
class PenaltyPolicy:
    """`base`: delay after the first failure (seconds). `maximum`: the cap. `decay`: seconds
    without failures that forgive one. `max_keys`: how many peers plus accounts are tracked; the
    least recently failed are forgotten first."""

    base: float = 0.25
    maximum: float = 5.0
    decay: float = 60.0
    max_keys: int = 100_000
    max_count: int = DEFAULT_MAX_COUNT

    def __post_init__(self) -> None:
        if not (0 <= self.base <= self.maximum and self.decay > 0):
            raise ValueError("penalty: need 0 <= base <= maximum and decay > 0")
        if self.max_keys < 1 or self.max_count < 1:
            raise ValueError("penalty: max_keys and max_count must be positive")


@dataclass(frozen=True, slots=True)
class Record:
    """The recent failures of one key: how many, the latest, and (pair keys only) when the
    pair's next check may start."""

    count: int
    last: float
    ready: float = 0.0


class PenaltyBook(Protocol):
    """The records of the penalty, by key ("peer 192.0.2.1", "account alice@example.com",
    "pair 192.0.2.1 alice@example.com"). `locked()` makes a sequence of calls atomic (across
    processes for a shared book)."""

    def locked(self) -> AbstractContextManager[object]: ...
    def get(self, key: str) -> Record | None: ...
    def put(self, key: str, record: Record) -> None: ...
    def drop(self, key: str) -> None:
        """Forget a record that has fully decayed (no count, no turn to wait for)."""

    def clear(self, key: str) -> None:
        """A success: forget `key`'s record, but only if it holds `key`'s failures alone."""

    def trim(self, max_keys: int) -> None:
        """Keep memory bounded after a put."""

    def __len__(self) -> int: ...


class LocalBook:
    """The records in this process: insertion order is the order of last failure, so the
    first entry is the one to evict past `max_keys`."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, Record] = OrderedDict()

    def locked(self) -> AbstractContextManager[object]:
        return contextlib.nullcontext()  # one event loop: each operation runs whole

    def get(self, key: str) -> Record | None:
        return self._entries.get(key)

    def put(self, key: str, record: Record) -> None:
        self._entries.pop(key, None)  # re-inserted: the key moves to the young end
        self._entries[key] = record

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self, key: str) -> None:
        self._entries.pop(key, None)

    def trim(self, max_keys: int) -> None:
        while len(self._entries) > max_keys:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def peer_key(peer: str) -> str:
    """The key a peer address is tracked under: the address itself, an IPv6 address's /64,
    and an IPv4-mapped IPv6 address as its IPv4 form. Unparsable text is used as is."""
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Penalty:
    """Recent failures per peer and per account, and the delay they earn."""

    def __init__(
        self,
        policy: PenaltyPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        book: PenaltyBook | None = None,
    ) -> None:
        self.policy = policy or PenaltyPolicy()
        self._clock = clock
        self.book: PenaltyBook = LocalBook() if book is None else book

    def __len__(self) -> int:
        return len(self.book)

    def _keys(self, peer: str, account: str | None) -> list[str]:
        keys = [f"peer {peer_key(peer)}"]
        if account:
            # Names are case-insensitive in the login grammar; count "Alice" and "alice" once.
            keys.append(f"account {account.casefold()}")
            keys.append(self._pair(peer, account))
        return keys

    @staticmethod
    def _pair(peer: str, account: str) -> str:
        return f"pair {peer_key(peer)} {account.casefold()}"

    def _count(self, key: str, now: float) -> int:
        entry = self.book.get(key)
        if entry is None:
            return 0
        forgiven = int(max(0.0, now - entry.last) // self.policy.decay)
        count = max(0, entry.count - forgiven)
        if count == 0 and entry.ready <= now:
            self.book.drop(key)
        return count

    def _delay(self, n: int) -> float:
        if n <= 0:
            return 0.0
        p = self.policy
        # Exponent bounded, so no overflow however many failures were recorded.
        return float(min(p.maximum, p.base * 2 ** (min(n, p.max_count) - 1)))

    def pair_key(self, peer: str, account: str) -> str:
        """The key of the (address, account) pair: what `cgpop.loginturn` serialises on."""
        return self._pair(peer, account)

    def pair_failures(self, peer: str, account: str) -> int:
        with self.book.locked():
            return self._count(self._pair(peer, account), self._clock())

    def _turn_wait(self, key: str, now: float) -> float:
        self._count(key, now)  # drops a fully decayed entry
        entry = self.book.get(key)
        return 0.0 if entry is None else max(0.0, entry.ready - now)

    def turn_wait(self, peer: str, account: str) -> float:
        """Seconds until the pair's next password check may start: its last failure plus the
        delay its recent failures earn (0 when it has none). The caller checks one attempt of
        a pair at a time, so this spaces the checks of all the address's connections."""
        with self.book.locked():
            return self._turn_wait(self._pair(peer, account), self._clock())

    def claim_turn(self, peer: str, account: str) -> float:
        """Take the pair's turn for a check starting now, or say how long until it is free.
        0.0: go ahead; for a pair with failures, its next turn has moved to where a failure of
        this check will put it (so no other process starts a check of the pair meanwhile;
        the outcome then sets it: a failure as `record_failure` does, a success clears it).
        A pair without failures is not claimed: a client's concurrent correct logins are never
        delayed, so before a pair's first failure each process may check one attempt of it."""
        now = self._clock()
        key = self._pair(peer, account)
        with self.book.locked():
            wait = self._turn_wait(key, now)
            if wait > 0:
                return wait
            count = self._count(key, now)
            entry = self.book.get(key)
            if count > 0 and entry is not None:
                ready = now + self._delay(count + 1)
                self.book.put(key, replace(entry, ready=max(entry.ready, ready)))
            return 0.0

    def failures(self, peer: str, account: str | None = None) -> int:
        """Recent failures that count for this attempt: the larger of the peer's and the
        account's."""
        now = self._clock()
        with self.book.locked():
            return max(self._count(k, now) for k in self._keys(peer, account))

    def delay_for(self, peer: str, account: str | None = None) -> float:
        """Seconds to wait before answering this attempt: 0 with no recent failures, then
        base, 2*base, 4*base, ... capped at maximum."""
        return self._delay(self.failures(peer, account))

    def record_failure(self, peer: str, account: str | None = None) -> None:
        now = self._clock()
        with self.book.locked():
            for key in self._keys(peer, account):
                count = min(self._count(key, now) + 1, self.policy.max_count)
                old = self.book.get(key)
                # Decay counts from the latest failure.
                ready = 0.0 if old is None else old.ready
                if key.startswith("pair "):
                    ready = max(ready, now + self._delay(count))
                self.book.put(key, Record(count, now, ready))
            self.book.trim(self.policy.max_keys)

    def record_success(self, peer: str, account: str | None = None) -> None:
        """A correct login clears the record of this address *for this account* only: the
        user has proven who they are from there. The address's record (it may be guessing
        other accounts) and the account's (others may be guessing it) stay, to decay."""
        if account:
            with self.book.locked():
                self.book.clear(self._pair(peer, account))
