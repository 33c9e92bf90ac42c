"""The systemd notification protocol against a datagram socket of the test's own: addresses,
message contents, the watchdog settings, and that a full socket never blocks the caller."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgpop.sdnotify import Notifier, monotonic_usec, socket_address, watchdog_interval


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_addresses() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@cgpop/notify") == "\0cgpop/notify"
    assert socket_address("@") is None
    assert socket_address("vsock:2:1234") is None
    assert socket_address("relative/path") is None


def test_unset_is_a_silent_no_op(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.ready() is False and n.stopping() is False and n.send("WATCHDOG=1") is False
    assert n.start_watchdog() is None
    assert caplog.records == []


def test_ready_reload_stop_in_order(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    n = Notifier({"NOTIFY_SOCKET": path})
    # Before start-up is complete there is no reload to report.
    assert n.reloading() is False and n.reloaded() is False
    assert n.ready("serving")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
    before = monotonic_usec()
    assert n.reloading()
    lines = sock.recv(4096).decode().split("\n")
    after = monotonic_usec()
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after
    assert n.reloaded()
    assert sock.recv(4096) == b"READY=1"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    n.close()


def test_abstract_namespace() -> None:
    name = f"cgpop-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert sock.recv(4096) == b"READY=1"
        n.close()
    finally:
        sock.close()


def test_monotonic_usec_is_the_clock_systemd_reads() -> None:
    low = int(time.monotonic() * 1_000_000)
    value = monotonic_usec()
    high = int(time.monotonic() * 1_000_000) + 1
    assert low <= value <= high


@pytest.mark.parametrize(
    "env, interval",
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}, 0.1),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    assert watchdog_interval(env, os.getpid()) == interval


def test_full_socket_never_blocks(
    receiver: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody reads the socket: sends fail fast (once logged) instead of waiting."""
    _, path = receiver
    n = Notifier({"NOTIFY_SOCKET": path})
    results = [n.send("WATCHDOG=1", "X=" + "y" * 4000) for _ in range(10_000)]
    assert results[0] is True
    assert results[-1] is False
    assert len([r for r in caplog.records if "cannot notify systemd" in r.getMessage()]) == 1
    n.close()


def test_vanished_socket_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.enabled
    assert n.ready() is False and n.stopping() is False
    assert len([r for r in caplog.records if "cannot notify systemd" in r.getMessage()]) == 1
    n.close()
