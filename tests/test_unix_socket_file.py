"""The file of a listening unix socket (cgpop/streams.py UnixSocketFile): its mode, the stale
file of a crash, a live or foreign file at the path, and removal only while it is ours."""

from __future__ import annotations

import errno
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgpop.streams import UnixSocketFile


@pytest.fixture
def path() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="cgpop-sock-"))  # short: sun_path holds 107 bytes
    yield base / "s.sock"
    shutil.rmtree(base, ignore_errors=True)


def test_mode_is_set_before_anyone_can_connect(path: Path) -> None:
    f = UnixSocketFile(path, 0o660)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        # Bound but not listening yet (the event loop listens): a connect is refused.
        with socket.socket(socket.AF_UNIX) as c, pytest.raises(ConnectionRefusedError):
            c.connect(str(path))
    finally:
        f.sock.close()
        f.remove()
    assert not path.exists()


def test_stale_socket_is_replaced_live_one_is_not(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as crashed:
        crashed.bind(str(path))
    first = UnixSocketFile(path, 0o660)  # the crash's leftover went
    first.sock.listen()
    try:
        with pytest.raises(OSError) as info:
            UnixSocketFile(path, 0o660)
        assert info.value.errno == errno.EADDRINUSE
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(path))  # the first server's socket is untouched
    finally:
        first.sock.close()
        first.remove()


def test_a_regular_file_is_never_deleted(path: Path) -> None:
    path.write_text("keep me")
    with pytest.raises(OSError) as info:
        UnixSocketFile(path, 0o660)
    assert info.value.strerror == "exists and is not a socket (refusing to replace it)"
    assert path.read_text() == "keep me"


def test_remove_leaves_a_file_that_is_no_longer_ours(path: Path) -> None:
    f = UnixSocketFile(path, 0o660)
    f.sock.close()
    # Moved away, not deleted: a deleted inode's number can be reused at once by the next file.
    path.rename(path.with_suffix(".old"))
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))  # another server took the path since
        f.remove()
        assert stat.S_ISSOCK(path.lstat().st_mode)
