"""Mailbox-name rules every backend applies the same way (pure, no SQL): what a rename moves."""

from __future__ import annotations

from collections.abc import Iterable

from accounts.names import INBOX
from cgpop.store.api import NotFound, StoreError


def rename_plan(mailboxes: Iterable[tuple[int, str]], old: str, new: str) -> list[tuple[int, str]]:
    """(id, new name) for `old` and every mailbox below it (`old/...`), as Cyrus renames a
    hierarchy: `lists` -> `archive` moves `lists/info` to `archive/info`. Ids, and with them
    UIDs, uidvalidity, flags and ACLs, stay. Refuses INBOX, a missing `old`, a name taken,
    and a move into the mailbox's own hierarchy."""
    if INBOX in (old, new):
        raise StoreError("INBOX cannot be renamed")
    if new == old or new.startswith(old + "/"):
        raise StoreError(f"cannot rename {old} into itself")
    names = dict(mailboxes)
    taken = set(names.values())
    if old not in taken:
        raise NotFound(f"no such mailbox: {old}")
    plan = [
        (box_id, new + name[len(old) :])
        for box_id, name in sorted(names.items(), key=lambda item: item[1])
        if name == old or name.startswith(old + "/")
    ]
    for _, name in plan:
        if name in taken:
            raise StoreError(f"mailbox already exists: {name}")
    return plan
