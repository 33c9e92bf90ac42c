"""PROXY protocol v1 and v2 (HAProxy) on a live server: a trusted proxy's header is required and
names the client; from an untrusted peer the header is an unknown command."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from cgpop.proxyproto import V2_SIGNATURE
from tests.conftest import LiveServer

from .secure import (  # noqa: F401 (close_clients is an autouse fixture)
    PASSWORD,
    USER,
    Client,
    client_context,
    close_clients,
    login,
    proxy_v1,
    proxy_v2,
    tls_server,
)


@pytest.fixture
def trusted(server_factory: Callable[..., LiveServer]) -> LiveServer:
    # "always": the proxied clients are not loopback, and these tests log in in cleartext.
    srv = server_factory(
        pop3={"proxy_from": ["127.0.0.0/8"], "max_per_ip": 1, "plaintext_auth": "always"}
    )
    srv.add_account(USER, PASSWORD)
    return srv


@pytest.mark.parametrize("header", [proxy_v1, proxy_v2], ids=["v1", "v2"])
def test_trusted_proxy_header_names_the_client(
    trusted: LiveServer, header: Callable[[str], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cgpop")
    c = Client(trusted.port(), prefix=header("203.0.113.9") + b"CAPA\r\n")
    assert c.greeting.startswith("+OK")
    assert c.line() == "+OK capability list follows"  # bytes after the header are POP3
    while c.line() != ".":
        pass
    assert "203.0.113.9" in caplog.text
    # The limit counts 203.0.113.9, not the proxy: a second client is another address...
    other = Client(trusted.port(), prefix=header("203.0.113.10"))
    assert login(other).startswith("+OK")
    # ...and a second connection from 203.0.113.9 is past max_per_ip = 1.
    again = Client(trusted.port(), prefix=header("203.0.113.9"), greet=False)
    assert again.line().startswith("-ERR [SYS/TEMP]")


def test_ipv6_source_in_v2(trusted: LiveServer) -> None:
    c = Client(trusted.port(), prefix=proxy_v2("2001:db8::1", dst="2001:db8::2"))
    assert login(c).startswith("+OK")


@pytest.mark.parametrize(
    "junk", [b"USER joe\r\n", b"PROXY TCP4 1.2.3.4\r\n", b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n"]
)
def test_trusted_peer_without_valid_header_is_closed(trusted: LiveServer, junk: bytes) -> None:
    c = Client(trusted.port(), prefix=junk, greet=False)
    assert c.line() == "-ERR PROXY protocol header expected"
    assert c.closed()


@pytest.mark.parametrize("header", [proxy_v1, proxy_v2], ids=["v1", "v2"])
def test_untrusted_peer_header_is_an_unknown_command(
    server_factory: Callable[..., LiveServer], header: Callable[[str], bytes]
) -> None:
    srv = server_factory(pop3={"proxy_from": ["192.0.2.0/24"]})
    srv.add_account(USER, PASSWORD)
    c = Client(srv.port())
    c.send(header("203.0.113.9"))
    if header is proxy_v1:
        assert c.line() == "-ERR unknown command"
        assert login(c).startswith("+OK")
        return
    # The v2 signature is "\r\n\r\n\0\r\nQUIT\n" by design: to a server that does not expect
    # it, it is two empty lines, a bad one, and QUIT.
    lines = [c.line() for _ in range(4)]
    assert all(x.startswith("-ERR") for x in lines[:3]) and lines[3].startswith("+OK")
    assert "signing off" in lines[3]
    assert c.closed()


def test_proxy_before_implicit_tls(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """On a pop3s listener the header comes first, then the TLS handshake; the ClientHello may
    arrive in the same segment as the header."""
    srv = tls_server(server_factory, tmp_path, pop3={"proxy_from": ["127.0.0.1"]})
    ctx = client_context(srv.extra["cert"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    c = Client(srv.port("pop3s"), greet=False)
    c.send(proxy_v2("203.0.113.5") + outgoing.read())  # one write: header + ClientHello
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if data := outgoing.read():
                c.send(data)
            chunk = c.sock.recv(65536)
            assert chunk, "server closed during the handshake"
            incoming.write(chunk)
    if data := outgoing.read():
        c.send(data)
    text = b""
    while b"\r\n" not in text:
        try:
            text += tls.read(4096)
        except ssl.SSLWantReadError:
            incoming.write(c.sock.recv(65536))
    assert text.startswith(b"+OK")


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n",
        V2_SIGNATURE + b"\x21\x00\x00\x00",
    ],
    ids=["v1-unknown", "v1-unknown-addresses", "v2-unspec"],
)
def test_unknown_client_is_not_the_proxys_loopback(
    server_factory: Callable[..., LiveServer], header: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10: a proxy that cannot name its client (v1 UNKNOWN, v2 UNSPEC) relays somebody
    who is not on loopback: plaintext login stays refused as for any remote client, and the
    log does not show the proxy's address as the client's."""
    caplog.set_level(logging.INFO, logger="cgpop")
    srv = server_factory(pop3={"proxy_from": ["127.0.0.0/8"]})  # plaintext_auth = "tls"
    srv.add_account(USER, PASSWORD)
    c = Client(srv.port(), prefix=header)
    assert c.greeting.startswith("+OK")
    assert c.cmd(f"USER {USER}").startswith("-ERR")
    capa = c.multi("CAPA")
    assert "USER" not in capa
    assert "proxied for unknown" in caplog.text


def test_v2_local_is_the_proxy_itself(server_factory: Callable[..., LiveServer]) -> None:
    """A v2 LOCAL header is the proxy's own health check: the socket's peer (loopback) stays."""
    srv = server_factory(pop3={"proxy_from": ["127.0.0.0/8"]})
    srv.add_account(USER, PASSWORD)
    c = Client(srv.port(), prefix=V2_SIGNATURE + b"\x20\x00\x00\x00")
    assert login(c).startswith("+OK")
