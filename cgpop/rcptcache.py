"""LMTP RCPT checks that an MTA repeats: a recipient accepted a moment ago is accepted again
without a worker-thread hop to the store.

RCPT is only the early answer (RFC 2033 section 4.2: refusing there lets the MTA bounce at
once). DATA delivers each recipient to the target the last store check saw (cgpop/delivery.py
`Deliverer.prepare`, `checked`), without reading the directory version again. Together: a
directory change reaches LMTP within TTL seconds plus one transaction. A mailbox removed
meanwhile still fails in the store (451 for that recipient, the MTA retries); a route or right
removed meanwhile still delivers where it pointed until then. Refusals are never remembered,
so a new account or a new `anyone p` right is accepted at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

R = TypeVar("R")

# How long an acceptance is reused: short against directory changes, long enough that a
# busy MTA's RCPTs to the same few recipients skip the store (profiled: the hop was about a
# tenth of a delivery's server CPU).
TTL = 1.0
# Recipients are client input: past this many the cache starts over.
MAX_ENTRIES = 10_000


class AcceptedRecipients(Generic[R]):
    """Wraps the store's RCPT check (`check(recipient)` -> None when accepted, else the
    refusal), remembering acceptances for `ttl` seconds."""

    def __init__(
        self,
        check: Callable[[str], Awaitable[R | None]],
        ttl: float = TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check, self.ttl, self._clock = check, ttl, clock
        self._accepted: dict[str, float] = {}  # recipient -> when its acceptance expires

    async def check(self, recipient: str) -> R | None:
        now = self._clock()
        until = self._accepted.get(recipient)
        if until is not None and until > now:
            return None
        refused = await self._check(recipient)
        if refused is not None:
            self._accepted.pop(recipient, None)
        elif self.ttl > 0:
            if len(self._accepted) >= MAX_ENTRIES:
                self._accepted.clear()
            self._accepted[recipient] = now + self.ttl
        return refused
