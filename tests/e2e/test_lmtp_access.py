"""LMTP on a unix socket (`[lmtp] listen = ["unix:/path"]`, what Postfix's `lmtp:unix:` talks
to) and the TCP peer check (`[lmtp] allow_from`), against a live server."""

from __future__ import annotations

import asyncio
import email
import logging
import os
import shutil
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cgpop.config import from_dict
from cgpop.lmtp import LmtpListeners
from tests.conftest import LiveServer, message
from tests.e2e.helpers import TIMEOUT, pop

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
try:
    import uvloop

    LOOPS["uvloop"] = uvloop.new_event_loop  # what `cgpop serve` runs on when installed
except ImportError:  # pragma: no cover - uvloop is optional
    pass


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for sockets: pytest's tmp_path can exceed sun_path's 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="cgpop-lmtp-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def lmtp_unix(path: Path, rcpt: str, subject: str) -> None:
    # smtplib.LMTP takes a host starting with "/" as a unix socket path.
    client = smtplib.LMTP(str(path), timeout=TIMEOUT)
    try:
        client.sendmail("sender@remote.test", [rcpt], message(subject))
    finally:
        client.quit()


def retr_all(srv: LiveServer) -> list[email.message.Message]:
    client = pop(srv)
    try:
        count = client.stat()[0]
        return [
            email.message_from_bytes(b"\r\n".join(client.retr(n)[1])) for n in range(1, count + 1)
        ]
    finally:
        client.quit()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_delivery_over_a_unix_socket(
    server_factory: Callable[..., LiveServer],
    sockdir: Path,
    loop: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = sockdir / "lmtp.sock"
    caplog.set_level(logging.INFO, "cgpop")
    srv = server_factory(loop_factory=LOOPS[loop], lmtp={"listen": ["127.0.0.1:0", f"unix:{path}"]})
    srv.add_account("joe@example.com", "secret")
    st = path.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert f"LMTP listening on unix:{path}" in caplog.text
    lmtp_unix(path, "joe@example.com", "over unix")
    [got] = retr_all(srv)
    assert got["Subject"] == "over unix"
    assert got["Return-Path"] == "<sender@remote.test>"
    assert got["X-Real-To"] == "<joe@example.com>"
    assert any(
        r.getMessage().startswith("LMTP [") and " unix: " in r.getMessage() for r in caplog.records
    )
    srv.stop()
    assert not path.exists()  # removed at stop


def test_stale_socket_from_a_crash_is_replaced(
    server_factory: Callable[..., LiveServer], sockdir: Path
) -> None:
    path = sockdir / "lmtp.sock"
    with socket.socket(socket.AF_UNIX) as dead:  # bound once, nobody listens any more
        dead.bind(str(path))
    srv = server_factory(lmtp={"listen": [f"unix:{path}"]})
    srv.add_account("joe@example.com", "secret")
    lmtp_unix(path, "joe@example.com", "after a crash")
    assert [m["Subject"] for m in retr_all(srv)] == ["after a crash"]


def serve_fails(tmp_path: Path, listen: str) -> subprocess.CompletedProcess[str]:
    """`cgpop serve` as an operator runs it, expected to refuse to start."""
    conf = tmp_path / "cgpop.toml"
    conf.write_text(
        f'[server]\ndata_dir = "data"\n[pop3]\nlisten = ["127.0.0.1:0"]\n'
        f'[lmtp]\nlisten = ["{listen}"]\n'
    )
    env = {**os.environ, "CGPOP_CONFIG": str(conf)}
    return subprocess.run(
        [sys.executable, "-m", "cgpop", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_socket_in_use_is_not_stolen(
    server_factory: Callable[..., LiveServer], sockdir: Path, tmp_path: Path
) -> None:
    path = sockdir / "lmtp.sock"
    first = server_factory(tmp_path / "one", lmtp={"listen": [f"unix:{path}"]})
    first.add_account("joe@example.com", "secret")
    second = serve_fails(tmp_path, f"unix:{path}")
    assert second.returncode == 1
    assert second.stderr.strip().endswith(
        f"cannot listen on unix:{path} for lmtp: in use: another process listens on this socket"
    )
    lmtp_unix(path, "joe@example.com", "still the first")
    assert [m["Subject"] for m in retr_all(first)] == ["still the first"]


def test_a_file_that_is_not_a_socket_is_refused(tmp_path: Path, sockdir: Path) -> None:
    path = sockdir / "lmtp.sock"
    path.write_text("not a socket")
    result = serve_fails(tmp_path, f"unix:{path}")
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        f"{tmp_path}/cgpop.toml: lmtp.listen: 'unix:{path}': exists and is not a socket"
        " (refusing to replace it)"
    )
    assert path.read_text() == "not a socket"


def test_a_file_appearing_after_the_check_is_refused_at_start(sockdir: Path) -> None:
    """The configuration passed, then a regular file appeared at the path: the listener's
    start fails with the reason and leaves the file alone."""
    path = sockdir / "lmtp.sock"
    cfg = from_dict({"lmtp": {"listen": [f"unix:{path}"]}})
    path.write_text("not a socket")
    listeners = LmtpListeners(cfg.lmtp, "test.local", sockdir, refuse_all, refuse_all)
    with pytest.raises(OSError) as info:
        asyncio.run(listeners.start(cfg.lmtp.listen[0]))
    assert str(info.value) == (
        f"cannot listen on unix:{path} for lmtp: exists and is not a socket"
        " (refusing to replace it)"
    )
    assert path.read_text() == "not a socket"


async def refuse_all(*args: object) -> Any:
    raise AssertionError("no delivery expected")


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_tcp_peer_outside_allow_from_gets_421(
    server_factory: Callable[..., LiveServer],
    sockdir: Path,
    caplog: pytest.LogCaptureFixture,
    loop: str,
) -> None:
    path = sockdir / "lmtp.sock"
    srv = server_factory(
        loop_factory=LOOPS[loop],
        lmtp={"listen": ["127.0.0.1:0", f"unix:{path}"], "allow_from": ["192.0.2.0/24"]},
    )
    srv.add_account("joe@example.com", "secret")
    caplog.set_level(logging.WARNING, "cgpop")
    with socket.create_connection((srv.host, srv.port("lmtp")), TIMEOUT) as sock:
        port = sock.getsockname()[1]
        f = sock.makefile("rb")  # closed below, before the socket
        assert f.readline() == b"421 4.7.1 access denied: not an allowed LMTP client\r\n"
        assert f.read() == b""  # and closed
        f.close()
    assert f"LMTP 127.0.0.1:{port} refused: 127.0.0.1 is not in [lmtp] allow_from" in caplog.text
    # The unix socket is guarded by its file mode, not by allow_from.
    lmtp_unix(path, "joe@example.com", "local MTA")
    assert [m["Subject"] for m in retr_all(srv)] == ["local MTA"]


def test_ipv6_loopback_is_allowed_by_default(server_factory: Callable[..., LiveServer]) -> None:
    """The default allow_from is loopback on both families: 127.0.0.0/8 and ::1."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    srv = server_factory(lmtp={"listen": ["[::1]:0"]})
    srv.add_account("joe@example.com", "secret")
    client = smtplib.LMTP("::1", srv.port("lmtp"), timeout=TIMEOUT)
    try:
        assert client.sendmail("sender@remote.test", ["joe@example.com"], message("v6")) == {}
    finally:
        client.quit()
    assert [m["Subject"] for m in retr_all(srv)] == ["v6"]


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_connection_cap_refusal_is_sent_on_every_loop(
    server_factory: Callable[..., LiveServer], loop: str
) -> None:
    """Past `[lmtp] max_connections` the MTA gets 421 4.3.2 (on uvloop, what `cgpop serve`
    runs on, the refusal used to fail an isinstance check and send nothing)."""
    srv = server_factory(loop_factory=LOOPS[loop], lmtp={"max_connections": 1})
    first = smtplib.LMTP(srv.host, srv.port("lmtp"), timeout=TIMEOUT)
    try:
        with (
            socket.create_connection((srv.host, srv.port("lmtp")), TIMEOUT) as second,
            second.makefile("rb") as f,
        ):
            assert f.readline() == b"421 4.3.2 too many connections, try later\r\n"
            assert f.read() == b""
            f.close()
        assert first.noop()[0] == 250
    finally:
        first.quit()
