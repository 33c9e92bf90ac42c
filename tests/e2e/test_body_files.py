"""Large bodies live in files written before the delivery transaction commits (issue 10,
defect 1): a server starting meanwhile must not remove them, and a body that is missing anyway
is a clean -ERR for that message, never bytes inside a multi-line reply."""

from __future__ import annotations

import os
import poplib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cgpop.store.sqlite import SqliteStore
from tests.conftest import LiveServer, message
from tests.e2e.helpers import pop

BIG = message("big", ("y" * 76 + "\n") * 4000)


def _body_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "bodies").glob("*/*") if p.parent.name != "tmp"]


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    # Another process's progress has no event to wait on: poll the file system, bounded.
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_server_start_keeps_the_file_of_a_delivery_not_yet_committed(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = server_factory(data_dir)
    first.add_account("joe@example.com", "secret")
    first.stop()
    config = tmp_path / "cgpop.toml"
    config.write_text(f'[server]\ndata_dir = "{data_dir}"\ndefault_domain = "example.com"\n')

    # Hold SQLite's write lock so the CLI's delivery stops between writing the body file and
    # committing the row that names it: the window the server's start used to fall into.
    blocker = sqlite3.connect(data_dir / "cgpop.sqlite3", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    env = {k: v for k, v in os.environ.items() if k != "CGPOP_CONFIG"}
    source = tmp_path / "big.eml"
    source.write_bytes(BIG)
    with open(source, "rb") as stdin:
        deliver = subprocess.Popen(
            [sys.executable, "-m", "cgpop", "deliver", "-c", str(config), "joe@example.com"],
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
    try:
        _wait_for(lambda: bool(_body_files(data_dir)), "the CLI's body file")
        # What `cgpop serve` does first at start (its next step, the collector, needs the
        # write lock, so a whole server start cannot complete while the lock is held).
        sweeper = SqliteStore(data_dir)
        try:
            sweeper.remove_orphan_files()
        finally:
            sweeper.close()
        assert _body_files(data_dir), "the sweep removed a file whose delivery is in progress"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    _, err = deliver.communicate(timeout=60)
    assert deliver.returncode == 0, err.decode()
    server = server_factory(data_dir)  # the sweep again, now with the delivery committed

    client = pop(server)
    try:
        assert client.stat()[0] == 1
        lines = client.retr(1)[1]
        assert b"\r\n".join(lines).endswith(BIG.replace(b"\n", b"\r\n").rstrip(b"\r\n"))
    finally:
        client.quit()


def test_sweep_still_removes_a_crashed_writers_orphan(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = server_factory(data_dir)
    first.stop()
    orphan = data_dir / "bodies" / "ab" / ("ab" + "0" * 30)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left by a writer killed before its commit\r\n")
    leftover = data_dir / "bodies" / "tmp" / ("cd" + "0" * 30)
    leftover.write_bytes(b"half written\r\n")
    server_factory(data_dir)
    assert not orphan.exists()
    assert not leftover.exists()


def test_a_missing_body_is_a_clean_err_and_the_session_goes_on(
    server: LiveServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.deliver("joe@example.com", BIG)
    server.deliver("joe@example.com", message("small"))
    data_dir = Path(server.config.server.data_dir)
    (file,) = _body_files(data_dir)
    file.unlink()

    client = pop(server)
    try:
        with caplog.at_level("ERROR", logger="cgpop"):
            with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/TEMP\]"):
                client.retr(1)
            with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/TEMP\]"):
                client.top(1, 0)
        assert any("unreadable" in r.getMessage() for r in caplog.records)
        # The session is intact: the next command gets its own reply.
        assert client.stat()[0] == 2
        assert b"Subject: small" in client.retr(2)[1]
    finally:
        client.quit()
