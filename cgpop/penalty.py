"""Failed-login delay per peer address and per account, with bounded memory. Pure: no sleeping,
no I/O; the clock is injected.

The engine asks `delay_for(peer, account)` before answering a login attempt and waits that long
(the same wait for a wrong password and an unknown account, so the two look alike), then reports
the outcome with `record_failure` or `record_success`. The delay doubles with each recent
failure from the peer or against the account, from `base` up to `maximum`; one failure is
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
        return keys

    def _count(self, key: tuple[str, str], now: float) -> int:
        entry = self._entries.get(key)
        if entry is None:
            return 0
        forgiven = int(max(0.0, now - entry.last) // self.policy.decay)
        count = entry.count - forgiven
        if count <= 0:
            del self._entries[key]
            return 0
        return count

    def failures(self, peer: str, account: str | None = None) -> int:
        """Recent failures that count for this attempt: the larger of the peer's and the
        account's."""
        now = self._clock()
        return max(self._count(k, now) for k in self._keys(peer, account))

    def delay_for(self, peer: str, account: str | None = None) -> float:
        """Seconds to wait before answering this attempt: 0 with no recent failures, then
        base, 2*base, 4*base, ... capped at maximum."""
        n = self.failures(peer, account)
        if n == 0:
            return 0.0
        p = self.policy
        # Exponent bounded by max_count, so no overflow however many failures were recorded.
        return float(min(p.maximum, p.base * 2 ** (n - 1)))

    def record_failure(self, peer: str, account: str | None = None) -> None:
        now = self._clock()
        for key in self._keys(peer, account):
            count = min(self._count(key, now) + 1, self.policy.max_count)
            self._entries.pop(key, None)
            # Decay counts from the latest failure; re-inserting moves the key to the young end.
            self._entries[key] = _Entry(count, now)
        while len(self._entries) > self.policy.max_keys:
            self._entries.popitem(last=False)

    def record_success(self, peer: str, account: str | None = None) -> None:
        """A correct login clears the account's and the peer's record (Dovecot's auth_penalty
        does the same for the address): the user behind it has proven who they are."""
        for key in self._keys(peer, account):
            self._entries.pop(key, None)
