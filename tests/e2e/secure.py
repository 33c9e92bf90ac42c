"""Helpers for the secure-session end-to-end tests: a certificate made by certgen, a server with
STLS and an implicit-TLS listener, a line-level client that can switch to TLS, and PROXY headers."""

from __future__ import annotations

import base64
import ipaddress
import socket
import ssl
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cgpop import certgen
from cgpop.proxyproto import V2_SIGNATURE
from tests.conftest import LiveServer

TIMEOUT = 5.0
USER, PASSWORD = "joe@example.com", "secret"


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed pair for 127.0.0.1 (certgen adds an IP SAN, which curl checks)."""
    return certgen.write_self_signed("127.0.0.1", directory)


def tls_server(
    factory: Callable[..., LiveServer], tmp_path: Path, **sections: dict[str, Any]
) -> LiveServer:
    cert, key = make_cert(tmp_path / "tls")
    pop3 = {"listen": ["127.0.0.1:0"], "tls_listen": ["127.0.0.1:0"]}
    pop3.update(sections.pop("pop3", {}))
    srv = factory(tls={"cert": str(cert), "key": str(key)}, pop3=pop3, **sections)
    srv.extra["cert"] = cert
    srv.extra["key"] = key
    srv.add_account(USER, PASSWORD)
    return srv


def client_context(cafile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    return ctx


OPEN: list[Client] = []


@pytest.fixture(autouse=True)
def close_clients(server_factory: Callable[..., LiveServer]) -> Iterator[None]:
    """Import into a test module: closes every Client the test left open, before the servers
    stop (which would otherwise wait shutdown_grace for those sessions)."""
    yield
    while OPEN:
        OPEN.pop().close()


class Client:
    """POP3 at the line level over a plain socket that may be upgraded to TLS."""

    def __init__(
        self,
        port: int,
        *,
        prefix: bytes = b"",
        greet: bool = True,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), TIMEOUT)
        OPEN.append(self)
        if prefix:
            self.sock.sendall(prefix)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.buf = b""
        self.greeting = self.line() if greet else ""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; buffered {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode()

    def cmd(self, text: str) -> str:
        self.send(text.encode() + b"\r\n")
        return self.line()

    def multi(self, text: str) -> list[str]:
        """A multi-line command: the status line, then the lines before the terminator."""
        status = self.cmd(text)
        lines = [status]
        if status.startswith("+OK"):
            while (line := self.line()) != ".":
                lines.append(line)
        return lines

    def capa(self) -> list[str]:
        return self.multi("CAPA")[1:]

    def starttls(self, ctx: ssl.SSLContext) -> None:
        assert self.buf == b"", f"unread cleartext before TLS: {self.buf!r}"
        self.sock = ctx.wrap_socket(self.sock, server_hostname="127.0.0.1")

    def closed(self) -> bool:
        """True when the server has closed the connection (after any buffered lines)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def proxy_v1(src: str, sport: int = 40000, dst: str = "127.0.0.1", dport: int = 110) -> bytes:
    family = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def proxy_v2(src: str, sport: int = 40000, dst: str = "192.0.2.1", dport: int = 110) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    fam = 0x11 if s.version == 4 else 0x21
    body = s.packed + d.packed + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


def login(client: Client, user: str = USER, password: str = PASSWORD) -> str:
    assert client.cmd(f"USER {user}").startswith("+OK")
    return client.cmd(f"PASS {password}")
