"""What an operator's log shows: tagged records with session id and peer, never a secret;
syslog when configured; the domain bound to a listener address."""

from __future__ import annotations

import base64
import logging
import os
import poplib
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import LiveServer, message

SECRET = "s3cr3t-Pa55"


def test_records_are_tagged_and_secrets_never_logged(
    server_factory: Callable[..., LiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    srv = server_factory()
    srv.add_account("joe@example.com", SECRET)
    srv.deliver("joe@example.com", message("x"))
    caplog.set_level(logging.DEBUG)
    pop = poplib.POP3(srv.host, srv.port(), timeout=5)
    pop.user("joe@example.com")
    pop.pass_(SECRET)
    pop.quit()
    plain = base64.b64encode(f"\0joe@example.com\0{SECRET}".encode()).decode()
    with (
        socket.create_connection((srv.host, srv.port()), timeout=5) as sock,
        sock.makefile("rb") as f,
    ):
        f.readline()
        sock.sendall(f"AUTH PLAIN {plain}\r\nQUIT\r\n".encode())
        assert f.readline().startswith(b"+OK")
        f.close()
    with (
        socket.create_connection((srv.host, srv.port("lmtp")), timeout=5) as sock,
        sock.makefile("rb") as f,
    ):
        f.readline()
        sock.sendall(b"LHLO x\r\nQUIT\r\n")
        while f.readline().startswith(b"250-"):
            pass
        f.close()
    text = caplog.text
    assert SECRET not in text and plain not in text
    pop_records = [r.getMessage() for r in caplog.records if r.getMessage().startswith("POP ")]
    assert pop_records, "no POP records"
    for msg in pop_records:
        assert re.match(r"POP \[[0-9a-f]+-\d+\] 127\.0\.0\.1:\d+: ", msg), msg
    assert any("PASS <redacted>" in m for m in pop_records)
    assert any(r.getMessage().startswith("LMTP [") for r in caplog.records)


@pytest.mark.parametrize(
    "line",
    [
        f"PASS\t{SECRET}",
        f"PASS  {SECRET}",
        f"pass \t {SECRET}",
        f"  PASS {SECRET}",
        f"APOP\tjoe@example.com {SECRET}",
        f"AUTH\tPLAIN {SECRET}",
        f"PASS{SECRET}",
    ],
    ids=["tab", "two-spaces", "lower-mixed", "leading-space", "apop-tab", "auth-tab", "glued"],
)
def test_secret_redacted_whatever_the_separator(
    server_factory: Callable[..., LiveServer], caplog: pytest.LogCaptureFixture, line: str
) -> None:
    """At DEBUG the command trace never shows a PASS/APOP/AUTH argument, even when the client
    separates it with a tab or several spaces (the engine refuses some of these lines, but the
    secret was still sent)."""
    srv = server_factory()
    srv.add_account("joe@example.com", SECRET)
    caplog.set_level(logging.DEBUG)
    with (
        socket.create_connection((srv.host, srv.port()), timeout=5) as sock,
        sock.makefile("rb") as f,
    ):
        f.readline()
        sock.sendall(b"USER joe@example.com\r\n" + line.encode() + b"\r\nQUIT\r\n")
        assert f.readline().startswith(b"+OK")  # USER
        f.readline()  # the reply to the secret line, whatever it is
        assert f.readline().startswith(b"+OK")  # QUIT: every line was traced by then
        f.close()
    assert SECRET not in caplog.text
    assert "<redacted>" in caplog.text


def test_sasl_continuation_lines_never_logged(
    server_factory: Callable[..., LiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    """A SASL response sent on its own line (after `+ `) is a secret too, whatever it looks like:
    even one that reads as a command is traced only as "<SASL response>"."""
    srv = server_factory(pop3={"plaintext_auth": "always"})
    srv.add_account("joe@example.com", SECRET)
    caplog.set_level(logging.DEBUG)
    plain = base64.b64encode(f"\0joe@example.com\0{SECRET}".encode()).decode()
    with (
        socket.create_connection((srv.host, srv.port()), timeout=5) as sock,
        sock.makefile("rb") as f,
    ):
        f.readline()
        sock.sendall(b"AUTH PLAIN\r\n")
        assert f.readline().startswith(b"+ ")
        sock.sendall(f"NOOP {SECRET}\r\n".encode())  # not base64: the exchange fails
        assert f.readline().startswith(b"-ERR")
        sock.sendall(b"AUTH PLAIN\r\n")
        assert f.readline().startswith(b"+ ")
        sock.sendall(plain.encode() + b"\r\nQUIT\r\n")
        assert f.readline().startswith(b"+OK")
        assert f.readline().startswith(b"+OK")
        f.close()
    assert SECRET not in caplog.text and plain not in caplog.text
    assert caplog.text.count("C: <SASL response>") == 2


def test_syslog(tmp_path: Path) -> None:
    """`[server] syslog = true` sends the records to the syslog socket, facility mail."""
    path = str(tmp_path / "log.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    sink.settimeout(20)
    conf = tmp_path / "c.toml"
    conf.write_text(
        f'[server]\ndata_dir = "data"\nsyslog = true\nsyslog_socket = "{path}"\n'
        '[pop3]\nlisten = ["127.0.0.1:0"]\n[lmtp]\nlisten = []\n'
    )
    env = {**os.environ, "CGPOP_CONFIG": str(conf)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cgpop", "serve"], env=env, stderr=subprocess.PIPE
    )
    try:
        datagram = sink.recv(4096).decode()
    finally:
        proc.terminate()
        proc.wait(15)
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        proc.stderr.close()
        sink.close()
    # <priority> = facility mail (2) * 8 + severity info (6) = 22
    assert datagram.startswith("<22>cgpop[") and "POP3 listening on 127.0.0.1:" in datagram
    assert b"listening" not in stderr


def test_listener_bound_domain(server_factory: Callable[..., LiveServer]) -> None:
    srv = server_factory(
        pop3={
            "listen": ["127.0.0.1:0", "127.0.0.2:0"],
            "listener_domains": {"127.0.0.2:0": "client1.com"},
        }
    )
    srv.add_account("jsmith@example.com", "one")
    srv.add_account("jsmith@client1.com", "two")
    bound = dict(srv.gateway.bound["pop3"])
    for host, password in (("127.0.0.1", "one"), ("127.0.0.2", "two")):
        pop = poplib.POP3(host, bound[host], timeout=5)
        pop.user("jsmith")
        assert pop.pass_(password).startswith(b"+OK")
        pop.quit()
    pop = poplib.POP3("127.0.0.2", bound["127.0.0.2"], timeout=5)
    pop.user("jsmith")
    with pytest.raises(poplib.error_proto):
        pop.pass_("one")  # example.com's password is not client1.com's
    pop.close()
