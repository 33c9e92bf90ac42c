"""Quota decisions shared by the backends (issue 12): which copies of a delivery fit, and the
warning a delivery raises. Pure: the backends read and lock the rows, this module decides, the
backends write the outcome in the same transaction.

Cyrus semantics: the account is the quota root of all its mailboxes; a domain limit caps the
sum over the domain's accounts. A copy fits when usage plus the copy is at most the limit, so a
message that brings usage to exactly the limit is still delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cgpop.store.api import OverQuota, Quota, Stored

# The default of `[quota] warn_percent` (Cyrus's quotawarn is 90 too).
WARN_PERCENT = 90


@dataclass(slots=True)
class Root:
    """A quota root's usage as a transaction moves it, and its limits."""

    name: str  # "name@domain" or "domain"
    storage: int
    messages: int
    storage_limit: int | None
    messages_limit: int | None
    id: int = 0  # the backend's row key

    def fits(self, size: int) -> bool:
        storage_ok = self.storage_limit is None or self.storage + size <= self.storage_limit
        count_ok = self.messages_limit is None or self.messages + 1 <= self.messages_limit
        return storage_ok and count_ok

    def add(self, size: int, count: int = 1) -> None:
        self.storage += size
        self.messages += count

    def quota(self) -> Quota:
        return Quota(self.storage, self.storage_limit, self.messages, self.messages_limit)


def admit(wanted: Sequence[tuple[Root, Root | None, int] | None]) -> list[OverQuota | None]:
    """Per copy in order, (account root, domain root or None when it has no limit, size), or
    None for a copy not to store (a duplicate): None when it fits (and is added to the
    roots), else the OverQuota naming the root it would pass."""
    out: list[OverQuota | None] = []
    for item in wanted:
        if item is None:
            out.append(None)
            continue
        account, domain, size = item
        if not account.fits(size):
            out.append(OverQuota(account.name))
        elif domain is not None and not domain.fits(size):
            out.append(OverQuota(domain.name))
        else:
            account.add(size)
            if domain is not None:
                domain.add(size)
            out.append(None)
    return out


def merge(stored: Sequence[bool], refused: Sequence[OverQuota | None]) -> list[Stored]:
    """Duplicate verdicts and quota verdicts into the per-copy outcome."""
    return [r if r is not None else s for s, r in zip(stored, refused, strict=True)]


def _crossed(before: int, after: int, limit: int | None, percent: int) -> bool:
    # Integer arithmetic: "at or above percent % of limit" is used * 100 >= percent * limit.
    return limit is not None and limit > 0 and before * 100 < percent * limit <= after * 100


def _amount(n: int, limit: int) -> str:
    """`n` octets in the unit that suits `limit` (1024-based, as `quota set` reads sizes)."""
    for unit, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if limit >= factor:
            return f"{round(n / factor, 1):g} {unit}"
    return f"{n} bytes"


def warning(before: tuple[int, int], after: Root, percent: int | None) -> str | None:
    """The alert text when a delivery took the account's usage of either limit from below
    `percent` % to at or above it (once per crossing: the next delivery starts above), else
    None. (storage, messages) before the delivery; `after` the account root after it."""
    if percent is None:
        return None
    texts: list[tuple[int, str]] = []
    if _crossed(before[0], after.storage, after.storage_limit, percent):
        assert after.storage_limit is not None
        limit = after.storage_limit
        share = after.storage * 100 // limit
        amounts = f"{_amount(after.storage, limit)} of {_amount(limit, limit)}"
        texts.append((share, f"Mailbox is {share}% full: {amounts}"))
    if _crossed(before[1], after.messages, after.messages_limit, percent):
        assert after.messages_limit is not None
        share = after.messages * 100 // after.messages_limit
        amounts = f"{after.messages} of {after.messages_limit} messages"
        texts.append((share, f"Mailbox is {share}% full: {amounts}"))
    return max(texts)[1] if texts else None
