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
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(slots=True)
class _Entry:
    count: int
    last: float
    # Pair entries only: when the next check may start.
    ready: float = 0.0


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
    ) -> None:
        self.policy = policy or PenaltyPolicy()
        self._clock = clock
        # Insertion order = order of last failure, so the first entry is the one to evict.
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _keys(self, peer: str, account: str | None) -> list[tuple[str, str]]:
        keys = [("peer", peer_key(peer))]
        if account:
            # Names are case-insensitive in the login grammar; count "Alice" and "alice" once.
            keys.append(("account", account.casefold()))
            keys.append(self._pair(peer, account))
        return keys

    @staticmethod
    def _pair(peer: str, account: str) -> tuple[str, str]:
        return ("pair", f"{peer_key(peer)} {account.casefold()}")

    def _count(self, key: tuple[str, str], now: float) -> int:
        entry = self._entries.get(key)
        if entry is None:
            return 0
        forgiven = int(max(0.0, now - entry.last) // self.policy.decay)
        count = max(0, entry.count - forgiven)
        if count == 0 and entry.ready <= now:
            del self._entries[key]
        return count

    def _delay(self, n: int) -> float:
        if n <= 0:
            return 0.0
        p = self.policy
        # Exponent bounded, so no overflow however many failures were recorded.
        return float(min(p.maximum, p.base * 2 ** (min(n, p.max_count) - 1)))

    def _evict(self) -> None:
        while len(self._entries) > self.policy.max_keys:
            self._entries.popitem(last=False)

    def pair_key(self, peer: str, account: str) -> tuple[str, str]:
        """The key of the (address, account) pair: what `cgpop.loginturn` serialises on."""
        return self._pair(peer, account)

    def pair_failures(self, peer: str, account: str) -> int:
        return self._count(self._pair(peer, account), self._clock())

    def turn_wait(self, peer: str, account: str) -> float:
        """Seconds until the pair's next password check may start: its last failure plus the
        delay its recent failures earn (0 when it has none). The caller checks one attempt of
        a pair at a time, so this spaces the checks of all the address's connections."""
        now = self._clock()
        key = self._pair(peer, account)
        self._count(key, now)  # drops a fully decayed entry
        entry = self._entries.get(key)
        return 0.0 if entry is None else max(0.0, entry.ready - now)

    def failures(self, peer: str, account: str | None = None) -> int:
        """Recent failures that count for this attempt: the larger of the peer's and the
        account's."""
        now = self._clock()
        return max(self._count(k, now) for k in self._keys(peer, account))

    def delay_for(self, peer: str, account: str | None = None) -> float:
        """Seconds to wait before answering this attempt: 0 with no recent failures, then
        base, 2*base, 4*base, ... capped at maximum."""
        return self._delay(self.failures(peer, account))

    def record_failure(self, peer: str, account: str | None = None) -> None:
        now = self._clock()
        for key in self._keys(peer, account):
            count = min(self._count(key, now) + 1, self.policy.max_count)
            old = self._entries.pop(key, None)
            # Decay counts from the latest failure; re-inserting moves the key to the young end.
            entry = self._entries[key] = _Entry(count, now)
            if old is not None:
                entry.ready = old.ready
            if key[0] == "pair":
                entry.ready = max(entry.ready, now + self._delay(count))
        self._evict()

    def record_success(self, peer: str, account: str | None = None) -> None:
        """A correct login clears the record of this address *for this account* only: the
        user has proven who they are from there. The address's record (it may be guessing
        other accounts) and the account's (others may be guessing it) stay, to decay."""
        if account:
            self._entries.pop(self._pair(peer, account), None)
