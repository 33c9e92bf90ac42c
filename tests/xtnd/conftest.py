"""Fixtures for xtnd tests: an aiosmtpd sink and a tiny DNS server, both on 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from cgpop.certgen import write_self_signed

# ---------------------------------------------------------------- SMTP sink


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


@dataclass
class SinkHandler:
    """Accepts everyone except local parts starting with "temp" (450) or "perm" (550)."""

    messages: list[Received] = field(default_factory=list)
    data_reply: str = "250 2.0.0 OK queued"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.startswith("temp"):
            return "450 4.2.1 Mailbox busy, try later"
        if address.startswith("perm"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        return self.data_reply


class _PortZeroController(Controller):
    """aiosmtpd's Controller, bound to port 0: the real port is read back before the trigger.

    Its stop also closes the connections still open (asyncio's Server.close() leaves them, before
    Python 3.13): a relay connection open when the sink stops would otherwise leak its socket, and
    the ResourceWarning would fail whichever later test the garbage collector happens to run in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions: list[Any] = []

    def factory(self) -> Any:
        smtp = super().factory()  # type: ignore[no-untyped-call]
        self.sessions.append(smtp)
        return smtp

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]

    def stop(self, no_assert: bool = False) -> None:
        async def close_all() -> None:
            # Stop accepting first: a relay connecting meanwhile would otherwise be accepted
            # after the sweep below and leak. A connection just accepted gets its transport in
            # connection_made, scheduled with call_soon: let those callbacks run, then close.
            assert isinstance(self.server, asyncio.Server)
            self.server.close()
            # Several turns of the loop, closing at each: a session whose connection_made had
            # not run yet at the first sweep (its transport still None) is closed at a later one.
            for _ in range(10):
                await asyncio.sleep(0)
                for smtp in self.sessions:
                    if smtp.transport is not None and not smtp.transport.is_closing():
                        smtp.transport.close()
            for _ in range(3):
                await asyncio.sleep(0)  # connection_lost, which closes the socket, runs next

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(10)
        super().stop(no_assert)


@dataclass
class Sink:
    handler: SinkHandler
    port: int


def _authenticator(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"secret"
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for "localhost" / 127.0.0.1."""
    return write_self_signed(
        "localhost", tmp_path_factory.mktemp("tls"), days=1, also=("127.0.0.1",)
    )


def _start(handler: SinkHandler, **smtp_kwargs: Any) -> Iterator[Sink]:
    controller = _PortZeroController(handler, hostname="127.0.0.1", port=0, **smtp_kwargs)
    controller.start()
    try:
        yield Sink(handler, controller.port)
    finally:
        controller.stop()


@pytest.fixture
def sink() -> Iterator[Sink]:
    yield from _start(SinkHandler())


@pytest.fixture
def tls_sink(tls_files: tuple[Path, Path]) -> Iterator[Sink]:
    """A sink offering STARTTLS and requiring AUTH (password "secret") after it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    yield from _start(
        SinkHandler(),
        tls_context=context,
        require_starttls=True,
        authenticator=_authenticator,
        auth_required=True,
        auth_require_tls=True,
    )


@pytest.fixture
def client_tls_context(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_files[0]))


# ------------------------------------------------ scripted raw SMTP server


@pytest.fixture
def scripted() -> Iterator[Callable[[str], int]]:
    """A one-connection SMTP server that drops the line at a chosen point; returns its port.

    `drop` is "after-data-end" (read the whole body, then close without a reply) or
    "during-data" (close after the 354, before the body's end arrives).
    """
    threads: list[threading.Thread] = []
    sockets: list[socket.socket] = []

    def start(drop: str) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        sockets.append(listener)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as reader:
                conn.sendall(b"220 scripted ESMTP\r\n")
                while line := reader.readline():
                    verb = line[:4].upper()
                    if verb in (b"EHLO", b"HELO"):
                        conn.sendall(b"250 scripted\r\n")
                    elif verb == b"DATA":
                        conn.sendall(b"354 go ahead\r\n")
                        if drop == "during-data":
                            reader.readline()
                            return
                        while reader.readline() != b".\r\n":
                            pass
                        return  # the body's end arrived; vanish without replying
                    else:
                        conn.sendall(b"250 ok\r\n")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        port: int = listener.getsockname()[1]
        return port

    yield start
    for listener in sockets:
        listener.close()
    for thread in threads:
        thread.join(timeout=5)


# ---------------------------------------------------------------- DNS server

# A zone maps (name, type) to a list of RDATA texts, or to "NXDOMAIN", "SERVFAIL", "DROP".
Zone = dict[tuple[str, str], list[str] | str]


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None
        self.queries: list[tuple[str, str]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        response = dns.message.make_response(query)
        entry = self.zone.get((name, rdtype))
        names = {n for n, _ in self.zone}
        if entry == "DROP":
            return
        if entry == "SERVFAIL":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif entry == "NXDOMAIN" or (entry is None and name not in names):
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif isinstance(entry, list):
            response.answer.append(dns.rrset.from_text_list(name, 300, "IN", rdtype, entry))
        # else: the name exists with other types only, an empty NOERROR answer (NODATA)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


async def start_dns(zone: Zone) -> tuple[asyncio.DatagramTransport, _DnsProtocol, int]:
    """Start the DNS server in the running loop; returns transport, protocol, port."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _DnsProtocol(zone), local_addr=("127.0.0.1", 0)
    )
    port: int = transport.get_extra_info("sockname")[1]
    return transport, protocol, port
