"""Waiting for a login's turn (cgpop/penalty.py's `reserve`): the asyncio side of the failed-login
penalty, shared by every connection of one address trying one account."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from cgpop.errors import Pop3Error
from cgpop.penalty import Penalty
from cgpop.pop3.events import LoginOutcome

# RFC 3206 section 4: SYS/TEMP, "the failure is temporary; try again later". Not AUTH: the
# credentials were not checked, and the text does not tell whether the account exists (the
# key of an unknown name is spelt out by grammar alone, so it behaves the same).
THROTTLED = LoginOutcome(
    error=Pop3Error("too many failed logins, try later", "SYS/TEMP"), counts_as_failure=False
)


@contextlib.asynccontextmanager
async def login_turn(
    penalty: Penalty, peer: str, account: str
) -> AsyncIterator[LoginOutcome | None]:
    """Wait for the (peer, account) pair's turn, then check the credentials inside the block
    and record the outcome there. Yields None when the check may go ahead, or THROTTLED when
    the turn is too far off: do not check, answer with it (after a wait of `maximum`, so a
    refused client cannot spin)."""
    wait = penalty.reserve(peer, account)
    if wait is None:
        await asyncio.sleep(penalty.policy.maximum)
        yield THROTTLED
        return
    try:
        if wait > 0:
            await asyncio.sleep(wait)
        yield None
    finally:
        penalty.release(peer, account)
