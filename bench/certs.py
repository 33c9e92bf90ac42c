"""One self-signed TLS certificate for both servers, trusted by the client (cgpop.certgen
builds it)."""

from __future__ import annotations

import ssl
from pathlib import Path

from cgpop.certgen import write_self_signed

SERVER_NAME = "bench.local"


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for SERVER_NAME and 127.0.0.1 (in `directory`/tls), and its key."""
    return write_self_signed(SERVER_NAME, directory / "tls", days=30, also=("127.0.0.1",))


def client_context(cert: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
