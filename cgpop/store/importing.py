"""Bulk import's batches (`cgpop mailbox import`, api.Store.import_messages): each message
with the copy it becomes in the target mailbox, `batch` at a time, for either backend to
store a batch per transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from cgpop.store.api import Copy

T = TypeVar("T")
# What to record from a message's own X-Real-To field: the addresses (joined by
# REAL_TO_SEPARATOR) and the individual names (issue 13).
RealTo = Callable[[bytes], tuple[str | None, tuple[str, ...]]]


def import_batches(
    mailbox_id: int,
    messages: Iterable[tuple[bytes, int]],
    batch: int,
    real_to: RealTo | None,
    prepare: Callable[[bytes], T],
) -> Iterator[list[tuple[T, int, Copy]]]:
    """(prepare(octets), flag bits, copy) per message, in lists of at most `batch`, in order.
    `prepare` runs as each message arrives, so a batch holds only what the backend keeps."""
    pending: list[tuple[T, int, Copy]] = []
    for raw, flags in messages:
        x_real_to, names = real_to(raw) if real_to is not None else (None, ())
        copy = Copy(
            mailbox_id,
            b"",
            x_real_to,
            names[0] if names else None,
            more_individuals=tuple(names[1:]),
        )
        pending.append((prepare(raw), flags, copy))
        if len(pending) >= batch:
            yield pending
            pending = []
    if pending:
        yield pending
