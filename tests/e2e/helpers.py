"""Helpers shared by the end-to-end tests: logged-in poplib clients, a raw line-level POP3
socket, and a way to wait (on the server's own loop, no sleeps) until sessions have ended."""

from __future__ import annotations

import asyncio
import poplib
import socket
from typing import Any

from tests.conftest import LiveServer

TIMEOUT = 5.0
USER, PASSWORD = "joe@example.com", "secret"


def pop(server: LiveServer, user: str = USER, password: str = PASSWORD) -> poplib.POP3:
    client = poplib.POP3(server.host, server.port("pop3"), timeout=TIMEOUT)
    client.user(user)
    client.pass_(password)
    return client


def inbox(server: LiveServer, address: str = USER) -> Any:
    name, _, domain = address.partition("@")
    box = server.call(server.store.get_mailbox, domain, name, "INBOX")
    assert box is not None
    return box


def flags(server: LiveServer, uid: int, address: str = USER) -> int | None:
    """The stored flag bits of one message, read on the writer thread (after pending writes)."""
    return server.call(server.store.message_flags, inbox(server, address).id, uid)


def uids(server: LiveServer, address: str = USER) -> list[int]:
    return [m.uid for m in server.call(server.store.list_messages, inbox(server, address))]


def wait_sessions_closed(server: LiveServer, remaining: int = 0) -> None:
    """Wait, on the server's loop, until at most `remaining` connections are still open and
    the others have finished their cleanup (close_maildrop included)."""

    async def idle() -> None:
        tasks = server.gateway.state.tasks
        while len(tasks) > remaining:
            await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)

    asyncio.run_coroutine_threadsafe(asyncio.wait_for(idle(), TIMEOUT), server.loop).result(
        2 * TIMEOUT
    )


class Raw:
    """A POP3 connection at the byte level, for input no client library would send."""

    def __init__(self, server: LiveServer) -> None:
        self._open(server.port("pop3"), None)

    @classmethod
    def at(cls, port: int, source: str | None = None) -> Raw:
        """A connection to a server on 127.0.0.1 that is not a LiveServer (a `cgpop serve`
        process), from `source` when given (a 127.0.0.x address)."""
        raw = cls.__new__(cls)
        raw._open(port, source)
        return raw

    def _open(self, port: int, source: str | None) -> None:
        where = None if source is None else (source, 0)
        self.sock = socket.create_connection(("127.0.0.1", port), TIMEOUT, where)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        got = self.file.readline(100_000)
        if not got:
            raise EOFError("server closed the connection")
        return got

    def cmd(self, text: str | bytes) -> bytes:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.line()

    def multi(self) -> list[bytes]:
        """The lines of a multi-line body, still stuffed, up to (without) the terminator."""
        lines = []
        while (got := self.line()) != b".\r\n":
            lines.append(got)
        return lines

    def login(self, user: str = USER, password: str = PASSWORD) -> bytes:
        assert self.cmd(f"USER {user}").startswith(b"+OK")
        return self.cmd(f"PASS {password}")

    def at_eof(self) -> bool:
        return self.file.read(1) == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def login_error(srv: LiveServer, user: str, password: str = "pw") -> bytes:
    """The -ERR line a USER/PASS login gets (the login must fail)."""
    client = poplib.POP3(srv.host, srv.port("pop3"), timeout=TIMEOUT)
    try:
        client.user(user)
        try:
            client.pass_(password)
        except poplib.error_proto as exc:
            reply: bytes = exc.args[0]
            return reply
        raise AssertionError(f"login as {user!r} unexpectedly succeeded")
    finally:
        client.close()
