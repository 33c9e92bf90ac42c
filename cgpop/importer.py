"""Reading existing mail for `cgpop mailbox import`: a Maildir (Dovecot, Courier) or an mbox.

Maildir flags (the `:2,` info suffix, maildir(5)) become store flags; in an mbox, the
`Status:`/`X-Status:` headers that mutt and Dovecot write say which messages were read.
"""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from pathlib import Path

from cgpop.store.api import ANSWERED, DELETED, DRAFT, FLAGGED, SEEN

_MAILDIR_FLAGS = {"S": SEEN, "R": ANSWERED, "F": FLAGGED, "T": DELETED, "D": DRAFT}


def maildir_messages(path: Path) -> Iterator[tuple[bytes, int]]:
    """Messages of a Maildir in delivery order (new/ and cur/, sorted by file name, which
    starts with the delivery time)."""
    files = sorted(
        (
            f
            for sub in ("new", "cur")
            if (path / sub).is_dir()
            for f in (path / sub).iterdir()
            if f.is_file() and not f.name.startswith(".")
        ),
        key=lambda f: f.name,
    )
    for f in files:
        flags = 0
        _, sep, info = f.name.partition(":2,")
        if sep:
            for letter in info:
                flags |= _MAILDIR_FLAGS.get(letter, 0)
        yield f.read_bytes(), flags


def mbox_messages(path: Path) -> Iterator[tuple[bytes, int]]:
    box = mailbox.mbox(path, create=False)
    try:
        for key in box.iterkeys():
            msg = box.get_message(key)
            status = (msg.get("Status", "") or "") + (msg.get("X-Status", "") or "")
            flags = (SEEN if "R" in status else 0) | (ANSWERED if "A" in status else 0)
            flags |= FLAGGED if "F" in status else 0
            for header in ("Status", "X-Status"):
                del msg[header]
            yield msg.as_bytes(), flags
    finally:
        box.close()


def messages_from(path: Path) -> Iterator[tuple[bytes, int]]:
    if path.is_dir():
        if not (path / "cur").is_dir() and not (path / "new").is_dir():
            raise ValueError(f"{path} is a directory but not a Maildir (no cur/ or new/)")
        return maildir_messages(path)
    if path.is_file():
        return mbox_messages(path)
    raise ValueError(f"{path}: no such file or directory")
