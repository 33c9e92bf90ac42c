"""Taking turns at password checks (cgpop/penalty.py): the asyncio side of the failed-login
penalty. The checks of one (address, account) pair are made one at a time, across every
connection of the address, each after the pair's `turn_wait`; so a hundred connections guess
no faster than one (issue 10, defect 7).

With several workers (issue 14) the asyncio lock orders the attempts of one worker, and the
shared penalty book (cgpop.shared.SharedBook) orders the workers: `Penalty.claim_turn` takes
the pair's turn atomically across processes. The queue bound (MAX_QUEUED) is per worker; it
bounds connections held open, not the rate of checks, which the shared book sets."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from cgpop.access import LoginResult
from cgpop.errors import Pop3Error
from cgpop.penalty import Penalty

# RFC 3206 section 4: SYS/TEMP, "the failure is temporary; try again later". Not AUTH: the
# credentials were not checked. The key of an unknown name is spelt by the grammar alone, so
# known and unknown names are throttled alike and the reply tells nothing about existence.
THROTTLED = LoginResult(
    error=Pop3Error("too many failed logins, try later", "SYS/TEMP"), counts_as_failure=False
)
# Attempts of a failing pair allowed to queue behind the one being checked. Each waits up to
# `maximum` for its turn; more would only hold the attacker's connections open for longer,
# and a real user sharing the address and the account never waits more than this many turns.
MAX_QUEUED = 2


@dataclass(slots=True, eq=False)
class _Turn:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


# Per penalty object (tests replace the gateway's), the turns of pairs with attempts in flight.
_turns: weakref.WeakKeyDictionary[Penalty, dict[str, _Turn]] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def login_turn(
    penalty: Penalty, peer: str, account: str
) -> AsyncIterator[LoginResult | None]:
    """Wait for the (peer, account) pair's turn, then check the credentials inside the block
    and record the outcome there (the next attempt's wait depends on it). Yields None when the
    check may go ahead, or THROTTLED when too many attempts of a failing pair are already
    waiting: do not check, answer with it (after a wait of `maximum`, so a refused client
    cannot spin)."""
    turns = _turns.setdefault(penalty, {})
    key = penalty.pair_key(peer, account)
    turn = turns.get(key)
    if turn is None:
        turn = turns[key] = _Turn()
    if turn.users > MAX_QUEUED and penalty.pair_failures(peer, account) > 0:
        await asyncio.sleep(penalty.policy.maximum)
        yield THROTTLED
        return
    turn.users += 1
    try:
        async with turn.lock:
            # The pair's turn may be taken meanwhile by another worker of the server (a shared
            # penalty book): wait until the time the book names, then claim it again.
            while (wait := penalty.claim_turn(peer, account)) > 0:
                await asyncio.sleep(wait)
            yield None
    finally:
        turn.users -= 1
        if turn.users == 0 and turns.get(key) is turn:
            del turns[key]
