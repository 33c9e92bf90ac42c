"""The server as an operator runs it: `cgpop serve` in a process, SIGTERM, autologout."""

from __future__ import annotations

import dataclasses
import os
import poplib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgpop import sweeper
from cgpop.config import Config
from tests.conftest import LiveServer, message

CGPOP = [sys.executable, "-m", "cgpop"]


def serve(
    env: dict[str, str], kinds: tuple[str, ...] = ("POP3",)
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """Start `cgpop serve` and read the bound ports back from its log (port 0 in config)."""
    proc = subprocess.Popen([*CGPOP, "serve"], env=env, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 20
    while len(ports) < len(kinds) and time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        if not line and proc.poll() is not None:
            break
        found = re.search(r"(POP3S?|LMTP) listening on 127\.0\.0\.1:(\d+)", line)
        if found and found.group(1) in kinds:
            ports[found.group(1)] = int(found.group(2))
    assert len(ports) == len(kinds), "server did not report its ports"
    return proc, ports


def setup_joe(env: dict[str, str], subject: str) -> None:
    subprocess.run([*CGPOP, "domain", "add", "example.com"], env=env, check=True)
    subprocess.run(
        [*CGPOP, "account", "add", "joe@example.com", "--password-stdin"],
        input=b"secret\n",
        env=env,
        check=True,
    )
    subprocess.run(
        [*CGPOP, "deliver", "joe@example.com"], input=message(subject), env=env, check=True
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    conf = tmp_path / "cgpop.toml"
    conf.write_text(
        '[server]\ndata_dir = "data"\ndefault_domain = "example.com"\nshutdown_grace = 3\n'
        '[pop3]\nlisten = ["127.0.0.1:0"]\n[lmtp]\nlisten = ["127.0.0.1:0"]\n'
    )
    env = {**os.environ, "CGPOP_CONFIG": str(conf)}
    setup_joe(env, "one")
    proc, ports = serve(env)
    port = ports["POP3"]
    yield proc, port, conf
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    proc.stderr.close()


def test_sigterm_closes_listeners_and_sessions_and_exits_cleanly(
    served: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, port, _ = served
    pop = poplib.POP3("127.0.0.1", port, timeout=10)
    pop.user("joe@example.com")
    pop.pass_("secret")
    assert pop.stat()[0] == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    # The idle session was ended within the grace period, without a traceback to the client.
    sock = pop.sock
    sock.settimeout(5)
    try:
        rest = sock.recv(1000)
    except OSError:
        rest = b""
    pop.close()
    assert rest in (b"", b"-ERR [SYS/TEMP] server shutting down\r\n")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert proc.stderr is not None
    log = proc.stderr.read().decode()
    assert "shutting down" in log
    assert "Traceback" not in log


def test_messages_survive_a_sigterm_restart(
    served: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, port, conf = served
    pop = poplib.POP3("127.0.0.1", port, timeout=10)
    pop.user("joe@example.com")
    pop.pass_("secret")
    uidl = pop.uidl()[1]
    pop.quit()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    out = subprocess.run(
        [*CGPOP, "-c", str(conf), "mailbox", "show", "joe@example.com", "INBOX", "--json"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert uidl[0].split()[1].decode() in out


def test_idle_session_is_closed_silently(
    server_factory: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweeper, "SWEEP_INTERVAL", 0.1)

    def short_idle(cfg: Config) -> Config:
        return dataclasses.replace(cfg, pop3=dataclasses.replace(cfg.pop3, idle_timeout=0.5))

    srv: LiveServer = server_factory(adjust=short_idle)  # type: ignore[operator]
    srv.add_account("joe@example.com", "secret")
    with socket.create_connection(("127.0.0.1", srv.port()), timeout=10) as sock:
        assert sock.recv(1000).startswith(b"+OK")
        start = time.monotonic()
        data = sock.recv(1000)  # blocks until the server closes the idle connection
        assert data == b"", "autologout must close silently (RFC 1939 section 3)"
        assert time.monotonic() - start < 8
    # An active client is not cut off by the same timer.
    with socket.create_connection(("127.0.0.1", srv.port()), timeout=10) as sock2:
        sock2.recv(1000)
        for _ in range(6):
            time.sleep(0.2)
            sock2.sendall(b"CAPA\r\n")
            assert sock2.recv(1000).startswith(b"+OK")


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_tls_through_the_real_cli_event_loop(tmp_path: Path) -> None:
    """`cgpop serve` runs on uvloop when installed: STLS and implicit TLS must work there too,
    not only on the standard loop the in-process fixtures use."""
    env = {**os.environ, "CGPOP_CONFIG": str(tmp_path / "c.toml")}
    (tmp_path / "c.toml").write_text(
        '[server]\ndata_dir = "data"\n[pop3]\nlisten = ["127.0.0.1:0"]\n'
        'tls_listen = ["127.0.0.1:0"]\n[lmtp]\nlisten = []\n'
        '[tls]\ncert = "tls/cert.pem"\nkey = "tls/key.pem"\n'
    )
    subprocess.run(
        [*CGPOP, "cert", "--host", "127.0.0.1", "--out", str(tmp_path / "tls")],
        check=True,
        capture_output=True,
    )
    setup_joe(env, "tls")
    proc, ports = serve(env, ("POP3", "POP3S"))
    assert proc.stderr is not None
    try:
        cafile = str(tmp_path / "tls" / "cert.pem")
        for url, extra in (
            (f"pop3://127.0.0.1:{ports['POP3']}/1", ["--ssl-reqd"]),
            (f"pop3s://127.0.0.1:{ports['POP3S']}/1", []),
        ):
            out = subprocess.run(
                ["curl", "-s", *extra, "--cacert", cafile, url, "-u", "joe@example.com:secret"],
                capture_output=True,
                timeout=30,
            )
            assert out.returncode == 0, (url, out.stderr)
            assert b"Subject: tls" in out.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        log = proc.stderr.read().decode()
        proc.stderr.close()
    assert "Traceback" not in log


def test_shutdown_lets_a_busy_session_finish_its_command(server: LiveServer) -> None:
    """SIGTERM semantics in-process: a RETR being written when shutdown starts is completed
    (within the grace period), then the connection ends; nothing is cut mid-message."""
    line = b"x" * 998 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * 30_000  # 30 MB: more than socket buffers hold
    server.deliver("joe@example.com", body)
    with (
        socket.create_connection(("127.0.0.1", server.port()), timeout=20) as sock,
        sock.makefile("rb") as f,
    ):
        f.readline()
        sock.sendall(b"USER joe@example.com\r\nPASS secret\r\nRETR 1\r\n")
        f.readline()
        assert f.readline().startswith(b"+OK")
        status = f.readline()
        assert status.startswith(b"+OK")
        f.read(1000)  # the server is now blocked writing the rest
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        rest = f.read()  # to EOF
        stopper.join(30)
        f.close()
    assert rest.endswith(b"x\r\n.\r\n")
    assert rest.count(b"\r\n") > 29_000
