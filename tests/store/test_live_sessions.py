"""The live-session registry and the telemetry flags of cgpop.store.api (issue 12, section 3),
for every backend."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cgpop.store.api import LiveSession, Store
from tests.store.conftest import Opener


def _session(sid: str, account: str = "joe@example.com", since: float = 100.0) -> LiveSession:
    return LiveSession(
        sid, "node-a", "10.0.0.1:5000", "joe", account, "INBOX", "TRANSACTION", since, 0, True
    )


def test_sessions_are_recorded_updated_listed_and_removed(store: Store) -> None:
    assert store.list_sessions() == []
    store.record_sessions([_session("a-1"), _session("a-2", "ann@example.com", 200.0)], [], [])
    assert [s.id for s in store.list_sessions()] == ["a-1", "a-2"]
    assert store.list_sessions()[0] == _session("a-1")
    store.record_sessions([], [("a-1", "UPDATE", 1234)], [])
    first = store.list_sessions()[0]
    assert (first.state, first.sent_bytes, first.tls, first.node) == (
        "UPDATE",
        1234,
        True,
        "node-a",
    )
    store.record_sessions([], [], ["a-1"])
    assert [s.id for s in store.list_sessions()] == ["a-2"]
    # Added and removed in one batch (a session shorter than a flush) leaves nothing.
    store.record_sessions([_session("a-3")], [], ["a-3"])
    assert [s.id for s in store.list_sessions()] == ["a-2"]


def test_a_kill_request_reaches_the_owning_process_only(opener: Opener, store: Store) -> None:
    store.record_sessions([_session("a-1"), _session("a-2")], [], [])
    assert store.kill_requests() == []
    assert store.request_kill("a-2") is True
    assert store.request_kill("no-such") is False
    assert store.kill_requests() == ["a-2"]
    # Another process (the CLI) sees the sessions and may ask, but owns none of them.
    other = opener.open()
    assert [s.id for s in other.list_sessions()] == ["a-1", "a-2"]
    assert other.request_kill("a-1") is True
    if type(other).__name__ != "SqliteStore":  # one process: SQLite's owner is the pid
        assert other.kill_requests() == []
    assert sorted(store.kill_requests()) == ["a-1", "a-2"]
    store.record_sessions([], [], ["a-1", "a-2"])
    assert store.kill_requests() == []
    assert store.request_kill("a-1") is False


def test_closing_the_store_of_a_node_removes_its_sessions(opener: Opener, store: Store) -> None:
    other = opener.open()
    other.record_sessions([_session("b-1")], [], [])
    assert [s.id for s in store.list_sessions()] == ["b-1"]
    if type(other).__name__ == "SqliteStore":
        pytest.skip("SQLite rows belong to the process, not to the store object (next test)")
    other.close()
    assert store.list_sessions() == []


_CHILD = """
import os, sys
from cgpop import config
from cgpop.store.api import LiveSession
from cgpop.store.factory import open_store
st = open_store(config.from_dict({"server": {"data_dir": sys.argv[1]}}, source="<child>"))
st.record_sessions([LiveSession("dead-1", "n", "p", "l", "a@b", "INBOX", "TRANSACTION",
                                1.0, 0, False)], [], [])
os._exit(0)  # no close: as after kill -9
"""


def test_sqlite_rows_of_a_process_that_is_gone_disappear(opener: Opener, store: Store) -> None:
    if type(store).__name__ != "SqliteStore":
        pytest.skip("PostgreSQL: a dead node's rows go with its heartbeat (node_timeout)")
    data_dir = str(opener.config.server.data_dir)
    store.record_sessions([_session("mine-1")], [], [])
    subprocess.run([sys.executable, "-c", _CHILD, data_dir], check=True, timeout=60)
    assert [s.id for s in store.list_sessions()] == ["mine-1"]  # the dead one is not listed
    assert store.request_kill("dead-1") is False
    assert store.prune_sessions() == 1
    assert store.prune_sessions() == 0
    assert [s.id for s in store.list_sessions()] == ["mine-1"]


def test_telemetry_flags_move_the_version(opener: Opener, store: Store) -> None:
    v0 = store.telemetry_version()
    assert store.telemetry_accounts() == []
    assert store.set_telemetry("Joe@example.com", True) is True
    assert store.set_telemetry("joe@example.com", True) is False
    v1 = store.telemetry_version()
    assert v1 != v0
    assert store.set_telemetry("ann@example.com", True) is True
    other = opener.open()
    assert other.telemetry_accounts() == ["ann@example.com", "joe@example.com"]
    assert other.set_telemetry("ann@example.com", False) is True
    assert other.set_telemetry("ann@example.com", False) is False
    assert store.telemetry_accounts() == ["joe@example.com"]
    assert store.telemetry_version() not in (v0, v1)
