"""STLS (RFC 2595) and implicit TLS (RFC 8314) against a live server: curl and fetchmail, the
pipelined-injection defence, CAPA before and after TLS, the plaintext policy, and SIGHUP reload."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cgpop import certgen
from tests.conftest import LiveServer, message

from .secure import (  # noqa: F401 (close_clients is an autouse fixture)
    PASSWORD,
    USER,
    Client,
    b64,
    client_context,
    close_clients,
    login,
    proxy_v1,
    tls_server,
)

BODY = "the quick brown fox\n"
PLAIN_IR = b64(f"\0{USER}\0{PASSWORD}")


@pytest.fixture
def srv(server_factory: Callable[..., LiveServer], tmp_path: Path) -> LiveServer:
    s = tls_server(server_factory, tmp_path)
    s.deliver(USER, message("tls test", BODY))
    return s


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20
    )


def test_curl_stls_required(srv: LiveServer) -> None:
    r = curl(
        "--ssl-reqd",
        f"pop3://127.0.0.1:{srv.port('pop3')}/1",
        "-u",
        f"{USER}:{PASSWORD}",
        "--cacert",
        str(srv.extra["cert"]),
    )
    assert r.returncode == 0, r.stderr
    assert "Subject: tls test" in r.stdout and BODY.strip() in r.stdout


def test_curl_implicit_tls(srv: LiveServer) -> None:
    r = curl(
        f"pop3s://127.0.0.1:{srv.port('pop3s')}/",
        "-u",
        f"{USER}:{PASSWORD}",
        "--cacert",
        str(srv.extra["cert"]),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("1 ") and len(r.stdout.split()) == 2


def test_curl_refuses_a_certificate_it_does_not_trust(srv: LiveServer, tmp_path: Path) -> None:
    other, _ = certgen.write_self_signed("127.0.0.1", tmp_path / "other")
    r = curl(
        f"pop3s://127.0.0.1:{srv.port('pop3s')}/",
        "-u",
        f"{USER}:{PASSWORD}",
        "--cacert",
        str(other),
    )
    assert r.returncode != 0


@pytest.mark.parametrize("implicit", [False, True], ids=["stls", "pop3s"])
def test_fetchmail(srv: LiveServer, tmp_path: Path, implicit: bool) -> None:
    if shutil.which("fetchmail") is None:
        pytest.skip("fetchmail is not installed")
    home = tmp_path / "home"
    home.mkdir()
    rc = home / ".fetchmailrc"
    rc.write_text(
        f"poll 127.0.0.1 with proto POP3 user '{USER}' there with password "
        f"'{PASSWORD}' is 'nobody' here\n"
    )
    rc.chmod(0o600)
    out = tmp_path / "mbox"
    kind = "pop3s" if implicit else "pop3"
    args = [
        "fetchmail",
        "-f",
        str(rc),
        "-P",
        str(srv.port(kind)),
        "--auth",
        "password",
        "--sslproto",
        "tls1.2+",
        "--sslcertck",
        "--sslcertfile",
        str(srv.extra["cert"]),
        "--mda",
        f"cat >> {out}",
        "--nokeep",
        "--nosyslog",
        "--idfile",
        str(home / ".fetchids"),
    ]
    if implicit:
        args.insert(1, "--ssl")
    env = {**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)}
    r = subprocess.run([*args, "127.0.0.1"], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert BODY.strip() in out.read_text()
    # --nokeep: the message was deleted at QUIT, so TLS carried the whole session.
    c = Client(srv.port("pop3"))
    assert login(c).startswith("+OK joe@example.com has 0 messages")


def test_stls_discards_pipelined_cleartext(srv: LiveServer) -> None:
    """RFC 2595 section 4: `STLS\\r\\nUSER evil\\r\\n` in one write; the USER must be dropped."""
    c = Client(srv.port("pop3"))
    c.send(b"STLS\r\nUSER evil\r\n")
    assert c.line().startswith("+OK")
    c.starttls(client_context(srv.extra["cert"]))
    # Had the injected USER been processed, PASS would try to log in as "evil".
    assert c.cmd(f"PASS {PASSWORD}") == "-ERR send USER first"
    assert login(c).startswith("+OK")


def test_stls_twice_and_after_login_refused(srv: LiveServer) -> None:
    c = Client(srv.port("pop3"))
    assert c.cmd("STLS").startswith("+OK")
    c.starttls(client_context(srv.extra["cert"]))
    assert c.cmd("STLS") == "-ERR TLS is already active"
    assert login(c).startswith("+OK")
    assert c.cmd("STLS").startswith("-ERR")
    assert c.cmd("STAT").startswith("+OK 1 ")

    plain = Client(srv.port("pop3"))
    assert login(plain).startswith("+OK")  # loopback: plaintext allowed
    assert plain.cmd("STLS") == "-ERR STLS is not allowed in the TRANSACTION state"
    assert "STLS" not in plain.capa()


def test_stls_on_implicit_tls_listener_refused(srv: LiveServer) -> None:
    c = Client(srv.port("pop3s"), tls=client_context(srv.extra["cert"]))
    assert c.greeting.startswith("+OK")
    assert "STLS" not in c.capa()
    assert c.cmd("STLS") == "-ERR TLS is already active"
    assert login(c).startswith("+OK joe@example.com has 1 messages")


def test_no_stls_without_certificate(server: LiveServer) -> None:
    c = Client(server.port("pop3"))
    assert "STLS" not in c.capa()
    assert c.cmd("STLS") == "-ERR STLS is not available"


def test_plaintext_policy_for_a_non_loopback_client(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """plaintext_auth = "tls": a client seen (through a trusted proxy) from a public address
    gets no USER/PLAIN/LOGIN before TLS, and all of them after."""
    srv = tls_server(
        server_factory, tmp_path, pop3={"plaintext_auth": "tls", "proxy_from": ["127.0.0.1"]}
    )
    c = Client(srv.port("pop3"), prefix=proxy_v1("203.0.113.7"))
    before = c.capa()
    assert "STLS" in before and "USER" not in before
    sasl_line = next(x for x in before if x.startswith("SASL "))
    assert "PLAIN" not in sasl_line.split() and "LOGIN" not in sasl_line.split()
    assert "SCRAM-SHA-256" in sasl_line
    assert "use STLS" in c.cmd(f"USER {USER}")
    assert "use STLS" in c.cmd(f"AUTH PLAIN {PLAIN_IR}")
    bare = c.multi("AUTH")
    assert "PLAIN" not in bare and "SCRAM-SHA-256" in bare

    assert c.cmd("STLS").startswith("+OK")
    c.starttls(client_context(srv.extra["cert"]))
    after = c.capa()
    assert "STLS" not in after and "USER" in after
    sasl_after = next(x for x in after if x.startswith("SASL ")).split()
    assert "PLAIN" in sasl_after and "LOGIN" in sasl_after
    assert c.cmd(f"AUTH PLAIN {PLAIN_IR}").startswith("+OK")

    # The same server lets a loopback client use USER in cleartext.
    local = Client(srv.port("pop3"), prefix=proxy_v1("127.0.0.1"))
    assert "USER" in local.capa()


def _peer_cert(port: int, cafile: Path) -> bytes:
    c = Client(port, tls=client_context(cafile))
    assert isinstance(c.sock, ssl.SSLSocket)
    der = c.sock.getpeercert(binary_form=True)
    assert der is not None
    c.close()
    return der


def test_reload_certificate(srv: LiveServer, tmp_path: Path) -> None:
    cert = srv.extra["cert"]
    old_der = _peer_cert(srv.port("pop3s"), cert)
    old_pem = cert.read_bytes()
    # A session in TLS (STLS) before the reload.
    ongoing = Client(srv.port("pop3"))
    assert ongoing.cmd("STLS").startswith("+OK")
    ongoing.starttls(client_context(cert))
    assert login(ongoing).startswith("+OK")

    certgen.write_self_signed("127.0.0.1", cert.parent)  # same paths, new pair
    assert cert.read_bytes() != old_pem
    asyncio.run_coroutine_threadsafe(_call(srv.gateway.tls.reload_logged), srv.loop).result(10)

    new_der = _peer_cert(srv.port("pop3s"), cert)
    assert new_der != old_der
    fresh = Client(srv.port("pop3"))
    assert fresh.cmd("STLS").startswith("+OK")
    fresh.starttls(client_context(cert))
    assert isinstance(fresh.sock, ssl.SSLSocket)
    assert fresh.sock.getpeercert(binary_form=True) == new_der
    # The old session goes on with the old certificate.
    assert ongoing.cmd("STAT").startswith("+OK 1 ")
    assert ongoing.multi("RETR 1")[0].startswith("+OK")


async def _call(fn: Callable[[], None]) -> None:
    fn()
