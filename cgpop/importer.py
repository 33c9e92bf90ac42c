"""Reading existing mail for `cgpop mailbox import`: a Maildir (Dovecot, Courier) or an mbox.

Maildir flags (the `:2,` info suffix, maildir(5)) become store flags; in an mbox, the
`Status:`/`X-Status:` headers that mutt and Dovecot write say which messages were read.

Only regular files are read. The tree being imported usually belongs to a user while the import
runs as an administrator, so a symbolic link (`cur/x -> /etc/shadow`), a device, a FIFO or a
directory inside it is skipped and named in the `skipped` list, never followed or read; the
Maildir files are opened with O_NOFOLLOW relative to an O_NOFOLLOW handle on `cur/`/`new/`, so a
link swapped in after the listing is refused too.
"""

from __future__ import annotations

import errno
import mailbox
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from cgpop.store.api import ANSWERED, DELETED, DRAFT, FLAGGED, SEEN

_MAILDIR_FLAGS = {"S": SEEN, "R": ANSWERED, "F": FLAGGED, "T": DELETED, "D": DRAFT}


def not_regular(mode: int) -> str | None:
    """Why a file of this (lstat) mode is not imported, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "directory"
    return "not a regular file"  # device, FIFO, socket


# O_NONBLOCK: opening a FIFO swapped in after the listing must not hang the import.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY


def _read_regular(name: str, dir_fd: int) -> bytes | str:
    """The content of `name` in `dir_fd`, or why it is not a regular file."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link"
        raise
    with os.fdopen(fd, "rb") as f:
        why = not_regular(os.fstat(f.fileno()).st_mode)
        return why if why is not None else f.read()


def _shown(name: str) -> str:
    """A file name as it may be printed on the operator's terminal (no control characters)."""
    return name if name.isprintable() else ascii(name)


def maildir_messages(path: Path, skipped: list[str] | None = None) -> Iterator[tuple[bytes, int]]:
    """Messages of a Maildir in delivery order (new/ and cur/, sorted by file name, which
    starts with the delivery time). Entries that are not regular files are not read; each is
    appended to `skipped` as "sub/name (why)"."""
    skipped = [] if skipped is None else skipped
    dirs: dict[str, int] = {}
    entries: list[tuple[str, str]] = []
    try:
        for sub in ("new", "cur"):
            try:
                dirs[sub] = os.open(path / sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                skipped.append(f"{sub} ({not_regular(os.lstat(path / sub).st_mode)})")
                continue
            with os.scandir(dirs[sub]) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    why = not_regular(entry.stat(follow_symlinks=False).st_mode)
                    if why is None:
                        entries.append((entry.name, sub))
                    else:
                        skipped.append(f"{sub}/{_shown(entry.name)} ({why})")
        entries.sort()
        for name, sub in entries:
            data = _read_regular(name, dirs[sub])
            if isinstance(data, str):
                skipped.append(f"{sub}/{_shown(name)} ({data})")
                continue
            flags = 0
            _, sep, info = name.partition(":2,")
            if sep:
                for letter in info:
                    flags |= _MAILDIR_FLAGS.get(letter, 0)
            yield data, flags
    finally:
        for fd in dirs.values():
            os.close(fd)


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


def messages_from(path: Path, skipped: list[str] | None = None) -> Iterator[tuple[bytes, int]]:
    """The messages of the Maildir or mbox at `path`. The path itself must not be a symbolic
    link (name what it points to if that is meant); entries of a Maildir that are not regular
    files are skipped and listed in `skipped`."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file or directory") from None
    if stat.S_ISLNK(mode):
        raise ValueError(
            f"{path} is a symbolic link: not followed; name the Maildir or mbox it points to"
        )
    if stat.S_ISDIR(mode):
        if not (path / "cur").is_dir() and not (path / "new").is_dir():
            raise ValueError(f"{path} is a directory but not a Maildir (no cur/ or new/)")
        return maildir_messages(path, skipped)
    if stat.S_ISREG(mode):
        return mbox_messages(path)
    raise ValueError(f"{path} is not a regular file, a Maildir or an mbox")
