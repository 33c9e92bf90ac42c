"""LMTP RCPT acceptances reused for a moment (cgpop/rcptcache.py), refusals never."""

from __future__ import annotations

import asyncio

from cgpop.rcptcache import AcceptedRecipients


class Directory:
    """The store's RCPT check: who exists now, and how often it was asked."""

    def __init__(self, *known: str) -> None:
        self.known = set(known)
        self.asked: list[str] = []

    async def check(self, recipient: str) -> str | None:
        self.asked.append(recipient)
        return None if recipient in self.known else "unknown"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_acceptance_reused_within_ttl_then_checked_again() -> None:
    directory, clock = Directory("ann@example.com"), Clock()
    cache = AcceptedRecipients(directory.check, ttl=1.0, clock=clock)

    async def run() -> list[str | None]:
        out = [await cache.check("ann@example.com")]
        directory.known.clear()  # removed meanwhile: DATA refuses it, RCPT still accepts
        clock.now += 0.5
        out.append(await cache.check("ann@example.com"))
        clock.now += 0.6
        out.append(await cache.check("ann@example.com"))
        return out

    assert asyncio.run(run()) == [None, None, "unknown"]
    assert directory.asked == ["ann@example.com", "ann@example.com"]


def test_refusals_are_never_remembered() -> None:
    directory, clock = Directory(), Clock()
    cache = AcceptedRecipients(directory.check, ttl=1.0, clock=clock)

    async def run() -> list[str | None]:
        out = [await cache.check("new@example.com")]
        directory.known.add("new@example.com")  # the account is created: accepted at once
        out.append(await cache.check("new@example.com"))
        return out

    assert asyncio.run(run()) == ["unknown", None]
    assert directory.asked == ["new@example.com", "new@example.com"]


def test_ttl_zero_always_asks_the_store() -> None:
    directory = Directory("ann@example.com")
    cache = AcceptedRecipients(directory.check, ttl=0.0, clock=Clock())

    async def run() -> None:
        for _ in range(3):
            assert await cache.check("ann@example.com") is None

    asyncio.run(run())
    assert len(directory.asked) == 3
