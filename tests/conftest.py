"""Shared fixtures: a real cgpop Gateway on 127.0.0.1 port 0, run on its own event loop in a
background thread so tests can talk to it with blocking real clients (poplib, curl,
fetchmail, smtplib.LMTP). Readiness is the bound port coming back; no sleeps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from accounts.credentials import make_credentials
from cgpop import config as configmod
from cgpop.delivery import Deliverer
from cgpop.server import Gateway
from tests.pg import pg_dsn, postgres  # noqa: F401  (one PostgreSQL for the whole session)


@dataclass
class LiveServer:
    config: configmod.Config
    gateway: Gateway
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def port(self, kind: str = "pop3") -> int:
        return self.gateway.bound[kind][0][1]

    @property
    def store(self) -> Any:
        return self.gateway.store

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking store call on the server's writer thread (keeps SQLite use ordered)."""
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(
            self.gateway.workers.write(fn, *args), self.loop
        )
        return fut.result(30)

    def add_account(self, address: str, password: str, *, shared_secret: bool = False) -> None:
        name, _, domain = address.partition("@")
        creds = make_credentials(password, shared_secret=shared_secret)
        if not self.call(self.store.domain_exists, domain):
            self.call(self.store.add_domain, domain)
        self.call(self.store.add_account, domain, name, creds)

    def deliver(
        self, rcpt: str | list[str], message: bytes, sender: str = "sender@remote.test"
    ) -> list[Any]:
        rcpts = [rcpt] if isinstance(rcpt, str) else rcpt
        d = Deliverer(
            self.store,
            default_domain=self.config.server.default_domain,
            real_to_header=self.config.pop3.real_to_header,
        )
        return list(self.call(d.deliver, sender, rcpts, message))

    def stop(self) -> None:
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(60)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)


def start_server(
    data_dir: Path,
    *,
    adjust: Callable[[configmod.Config], configmod.Config] | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    **sections: dict[str, Any],
) -> LiveServer:
    raw: dict[str, dict[str, Any]] = {
        "server": {
            "data_dir": str(data_dir),
            "hostname": "test.local",
            "default_domain": "example.com",
            "shutdown_grace": 2,
        },
        "pop3": {"listen": ["127.0.0.1:0"]},
        "lmtp": {"listen": ["127.0.0.1:0"]},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    cfg = configmod.from_dict(raw, source="<test>")
    if adjust is not None:
        # For values the validator rightly refuses in production (a 1 s idle timeout).
        cfg = adjust(cfg)
    loop = loop_factory()
    started: Future[Gateway] = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            try:
                gw = Gateway(cfg)
                await gw.start()
            except BaseException as exc:
                started.set_exception(exc)
                return
            started.set_result(gw)

        loop.run_until_complete(boot())
        if started.exception() is None:
            loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=run, name="cgpop-test-server", daemon=True)
    thread.start()
    gw = started.result(30)
    return LiveServer(cfg, gw, loop, thread)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def make(
        data_dir: Path | None = None,
        adjust: Callable[[configmod.Config], configmod.Config] | None = None,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
        **sections: dict[str, Any],
    ) -> LiveServer:
        srv = start_server(
            data_dir or tmp_path / "data", adjust=adjust, loop_factory=loop_factory, **sections
        )
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture
def server(server_factory: Callable[..., LiveServer]) -> LiveServer:
    srv = server_factory()
    srv.add_account("joe@example.com", "secret")
    return srv


def message(subject: str, body: str = "Hello.\n", *, message_id: str | None = None) -> bytes:
    head = f"From: Sender <sender@remote.test>\nTo: joe@example.com\nSubject: {subject}\n"
    if message_id:
        head += f"Message-ID: {message_id}\n"
    return (head + "\n" + body).encode()
