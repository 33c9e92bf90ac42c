"""Per-domain certificates on a live server: a real TLS client sends a server name (SNI) on STLS
and on implicit TLS, and sees the certificate of the matching `[[tls.certificates]]` entry or the
`[tls]` one; a bare login name on such a session is in the entry's domain; a replaced file is
picked up by a reload while a session in TLS goes on."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cgpop import certgen
from tests.conftest import LiveServer, message

TIMEOUT = 5.0
# `cgpop serve` runs on uvloop when it is installed: the SNI record must work on both loops.
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
try:
    import uvloop

    LOOPS["uvloop"] = uvloop.new_event_loop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    pass


class TlsClient:
    """POP3 lines over TLS with a chosen SNI server name (None: no SNI)."""

    def __init__(self, srv: LiveServer, mode: str, server_name: str | None) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the test compares the certificate itself
        raw = socket.create_connection(("127.0.0.1", srv.port(mode)), TIMEOUT)
        self.buf = b""
        self.sock: socket.socket = raw
        if mode == "pop3":
            assert self.line().startswith("+OK")
            assert self.cmd("STLS").startswith("+OK")
        self.sock = ctx.wrap_socket(raw, server_hostname=server_name)
        if mode == "pop3s":
            assert self.line().startswith("+OK")

    @property
    def certificate(self) -> bytes:
        assert isinstance(self.sock, ssl.SSLSocket)
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        return der

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line.decode()

    def cmd(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def login(self, user: str, password: str) -> str:
        assert self.cmd(f"USER {user}").startswith("+OK")
        return self.cmd(f"PASS {password}")

    def close(self) -> None:
        self.sock.close()


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


@pytest.fixture(params=sorted(LOOPS))
def sni(
    server_factory: Callable[..., LiveServer], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[LiveServer]:
    default = certgen.write_self_signed("mail.example.com", tmp_path / "default")
    client2 = certgen.write_self_signed("pop.client2.com", tmp_path / "client2")
    srv = server_factory(
        loop_factory=LOOPS[request.param],
        pop3={"listen": ["127.0.0.1:0"], "tls_listen": ["127.0.0.1:0"]},
        tls={
            "cert": str(default[0]),
            "key": str(default[1]),
            "certificates": [
                {
                    "names": ["pop.client2.com", "*.client2.com"],
                    "cert": str(client2[0]),
                    "key": str(client2[1]),
                    "domain": "client2.com",
                }
            ],
        },
    )
    srv.extra.update(default=default[0], client2=client2[0], clients=[])
    # The same bare name in two domains, with different passwords and mail.
    srv.add_account("info@example.com", "pw-example")
    srv.add_account("info@client2.com", "pw-client2")
    srv.deliver("info@client2.com", message("for client2"))
    yield srv
    for c in srv.extra["clients"]:
        c.close()


def connect(srv: LiveServer, mode: str, server_name: str | None) -> TlsClient:
    c = TlsClient(srv, mode, server_name)
    srv.extra["clients"].append(c)
    return c


@pytest.mark.parametrize("mode", ["pop3", "pop3s"])  # STLS, implicit TLS
@pytest.mark.parametrize(
    "server_name, chosen",
    [
        ("pop.client2.com", "client2"),
        ("Mail.CLIENT2.com", "client2"),  # wildcard, any case
        ("a.b.client2.com", "default"),  # two labels: no match
        ("client2.com", "default"),  # the wildcard needs a label
        ("mail.example.com", "default"),
        (None, "default"),  # no SNI
    ],
)
def test_certificate_presented(sni: LiveServer, mode: str, server_name: str, chosen: str) -> None:
    c = connect(sni, mode, server_name)
    assert c.certificate == der(sni.extra[chosen])
    assert c.cmd("CAPA").startswith("+OK")


@pytest.mark.parametrize("mode", ["pop3", "pop3s"])
def test_bare_login_is_in_the_sni_domain(sni: LiveServer, mode: str) -> None:
    c = connect(sni, mode, "pop.client2.com")
    assert c.login("info", "pw-client2").startswith("+OK")
    assert c.cmd("STAT").startswith("+OK 1 ")
    # Without a matching name the listener's domain (the default) applies.
    other = connect(sni, mode, None)
    assert other.login("info", "pw-client2").startswith("-ERR")
    other = connect(sni, mode, "a.b.client2.com")
    assert other.login("info", "pw-example").startswith("+OK")
    assert other.cmd("STAT") == "+OK 0 0"
    # A full address is not changed by the SNI domain.
    full = connect(sni, mode, "pop.client2.com")
    assert full.login("info@example.com", "pw-example").startswith("+OK")


def test_reload_picks_up_a_replaced_certificate(sni: LiveServer) -> None:
    before = der(sni.extra["client2"])
    ongoing = connect(sni, "pop3", "pop.client2.com")
    assert ongoing.certificate == before
    assert ongoing.login("info", "pw-client2").startswith("+OK")

    certgen.write_self_signed("pop.client2.com", sni.extra["client2"].parent)
    after = der(sni.extra["client2"])
    assert after != before

    async def reload() -> None:
        sni.gateway.reload()

    asyncio.run_coroutine_threadsafe(reload(), sni.loop).result(10)
    for mode in ("pop3", "pop3s"):
        assert connect(sni, mode, "pop.client2.com").certificate == after
        assert connect(sni, mode, None).certificate == der(sni.extra["default"])
    # The session that was in TLS before goes on.
    assert ongoing.cmd("STAT").startswith("+OK 1 ")


@pytest.mark.parametrize("damage", ["missing", "not-pem", "wrong-key"])
def test_serve_refuses_an_unusable_entry_file_without_traceback(
    tmp_path: Path, damage: str
) -> None:
    certgen.write_self_signed("mail.example.com", tmp_path / "default")
    cert, key = certgen.write_self_signed("pop.client2.com", tmp_path / "client2")
    if damage == "missing":
        cert.unlink()
        reason = f"tls.certificates[0].cert: TLS certificate file {cert}: No such file"
    elif damage == "not-pem":
        cert.write_text("this is no certificate\n")
        reason = f"tls.certificates[0].cert: TLS certificate file {cert}: not a PEM certificate"
    else:
        key.write_bytes((tmp_path / "default" / "key.pem").read_bytes())
        reason = f"tls.certificates[0].key: TLS key file {key} does not match certificate file"
    conf = tmp_path / "cgpop.toml"
    conf.write_text(
        '[server]\ndata_dir = "data"\n[pop3]\nlisten = ["127.0.0.1:0"]\n'
        '[lmtp]\nlisten = ["127.0.0.1:0"]\n'
        '[tls]\ncert = "default/cert.pem"\nkey = "default/key.pem"\n'
        '[[tls.certificates]]\nnames = ["pop.client2.com"]\n'
        'cert = "client2/cert.pem"\nkey = "client2/key.pem"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "cgpop", "-c", str(conf), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"cgpop: configuration error: {conf}: {reason}")
    assert "Traceback" not in done.stderr
