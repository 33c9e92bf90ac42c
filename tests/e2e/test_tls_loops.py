"""Implicit TLS when the ClientHello is already buffered before the handshake starts, on the
standard loop and on uvloop (what `cgpop serve` uses): the bytes must reach the TLS layer.
A regression test for early handshake bytes being dropped under uvloop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cgpop import streams
from tests.conftest import LiveServer
from tests.e2e.secure import client_context, make_cert

uvloop = pytest.importorskip("uvloop")

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_implicit_tls_with_an_early_client_hello(
    server_factory: Callable[..., LiveServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    loop_name: str,
) -> None:
    real = streams.start_tls

    async def late_start_tls(*args: Any, **kwargs: Any) -> None:
        # Let the client's ClientHello arrive in the stream buffer first.
        await asyncio.sleep(0.2)
        await real(*args, **kwargs)

    monkeypatch.setattr(streams, "start_tls", late_start_tls)
    cert, key = make_cert(tmp_path / "tls")
    srv = server_factory(
        loop_factory=LOOPS[loop_name],
        tls={"cert": str(cert), "key": str(key)},
        pop3={"listen": ["127.0.0.1:0"], "tls_listen": ["127.0.0.1:0"]},
    )
    ctx = client_context(cert)
    for _ in range(3):
        raw = socket.create_connection(("127.0.0.1", srv.port("pop3s")), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.recv(1000).startswith(b"+OK")
            tls.sendall(b"QUIT\r\n")
            assert tls.recv(1000).startswith(b"+OK")
