"""SASL (RFC 5034) and APOP against a live server: every mechanism with and without an initial
response, `=`, `*` cancel, bad base64, the bare AUTH list, PLAIN authzid for admins only, and the
shared-secret-only mechanisms."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import LiveServer
from tests.sasl.test_support import ScramClient

from .secure import (  # noqa: F401 (close_clients is an autouse fixture)
    PASSWORD,
    USER,
    Client,
    b64,
    close_clients,
)

SECRET_USER, SECRET_PW = "sam@example.com", "sam-pw"


@pytest.fixture
def srv(server_factory: Callable[..., LiveServer]) -> LiveServer:
    s = server_factory(
        pop3={"apop": True, "cram_md5": True}, server={"admins": ["boss@example.com"]}
    )
    s.add_account(USER, PASSWORD)
    s.add_account(SECRET_USER, SECRET_PW, shared_secret=True)
    s.add_account("boss@example.com", "boss-pw")
    return s


def challenge(line: str) -> bytes:
    assert line.startswith("+ "), line
    return base64.b64decode(line[2:])


def plain(c: Client, ir: bool, authzid: str = "", user: str = USER, pw: str = PASSWORD) -> str:
    data = b64(f"{authzid}\0{user}\0{pw}")
    if ir:
        return c.cmd(f"AUTH PLAIN {data}")
    assert challenge(c.cmd("AUTH PLAIN")) == b""
    return c.cmd(data)


@pytest.mark.parametrize("ir", [True, False])
def test_plain(srv: LiveServer, ir: bool) -> None:
    c = Client(srv.port())
    assert plain(c, ir).startswith("+OK joe@example.com has 0 messages")


def test_plain_empty_initial_response(srv: LiveServer) -> None:
    """RFC 5034 section 4: `=` is an empty initial response; PLAIN then fails as malformed."""
    c = Client(srv.port())
    reply = c.cmd("AUTH PLAIN =")
    assert reply.startswith("-ERR") and "[AUTH]" not in reply
    assert plain(c, True).startswith("+OK")


@pytest.mark.parametrize("ir", [True, False])
def test_login(srv: LiveServer, ir: bool) -> None:
    c = Client(srv.port())
    first = c.cmd(f"AUTH LOGIN {b64(USER)}") if ir else c.cmd("AUTH LOGIN")
    if not ir:
        first = c.cmd(b64(USER))
    challenge(first)
    assert c.cmd(b64(PASSWORD)).startswith("+OK joe@example.com")


@pytest.mark.parametrize("ir", [True, False])
def test_scram_sha_256(srv: LiveServer, ir: bool) -> None:
    c = Client(srv.port())
    client = ScramClient(USER, PASSWORD, nonce="livetestnonce")
    if ir:
        server_first = challenge(c.cmd(f"AUTH SCRAM-SHA-256 {b64(client.first())}"))
    else:
        assert challenge(c.cmd("AUTH SCRAM-SHA-256")) == b""
        server_first = challenge(c.cmd(b64(client.first())))
    server_final = challenge(c.cmd(b64(client.final(server_first))))
    assert server_final == client.expected_server_final()
    assert c.cmd("").startswith("+OK joe@example.com")


def test_scram_wrong_password_is_an_auth_failure(srv: LiveServer) -> None:
    c = Client(srv.port())
    client = ScramClient(USER, "wrong", nonce="livetestnonce")
    server_first = challenge(c.cmd(f"AUTH SCRAM-SHA-256 {b64(client.first())}"))
    assert c.cmd(b64(client.final(server_first))) == "-ERR [AUTH] authentication failed"


def _scram_salt(port: int, user: str) -> bytes:
    c = Client(port)
    client = ScramClient(user, "x", nonce="saltprobe")
    first = challenge(c.cmd(f"AUTH SCRAM-SHA-256 {b64(client.first())}"))
    c.cmd("*")
    fields = dict(f.split("=", 1) for f in first.decode().split(","))
    return base64.b64decode(fields["s"])


def test_scram_fake_salt_is_stable_across_connections_and_restarts(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    one = server_factory(data)
    salt = _scram_salt(one.port(), "ghost@example.com")
    assert salt == _scram_salt(one.port(), "ghost@example.com")
    assert salt != _scram_salt(one.port(), "other-ghost@example.com")
    key_file = data / "sasl-fake-salt.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    one.stop()
    two = server_factory(data)
    assert _scram_salt(two.port(), "ghost@example.com") == salt


@pytest.mark.parametrize("ir", [True, False])
def test_cram_md5(srv: LiveServer, ir: bool) -> None:
    c = Client(srv.port())
    if ir:
        # RFC 2195 has the server speak first: an initial response is refused.
        assert c.cmd(f"AUTH CRAM-MD5 {b64('x')}").startswith("-ERR")
    chal = challenge(c.cmd("AUTH CRAM-MD5"))
    digest = hmac.new(SECRET_PW.encode(), chal, hashlib.md5).hexdigest()
    assert c.cmd(b64(f"{SECRET_USER} {digest}")).startswith("+OK sam@example.com")


def test_cram_md5_and_apop_need_a_shared_secret(srv: LiveServer) -> None:
    c = Client(srv.port())
    chal = challenge(c.cmd("AUTH CRAM-MD5"))
    digest = hmac.new(PASSWORD.encode(), chal, hashlib.md5).hexdigest()
    assert c.cmd(b64(f"{USER} {digest}")) == "-ERR [AUTH] authentication failed"
    banner = re.search(r"<[^>]+>", c.greeting)
    assert banner is not None
    apop = hashlib.md5((banner.group(0) + PASSWORD).encode()).hexdigest()
    assert c.cmd(f"APOP {USER} {apop}") == "-ERR [AUTH] authentication failed"


def test_apop(srv: LiveServer) -> None:
    c = Client(srv.port())
    banner = re.search(r"<[^>]+>", c.greeting)
    assert banner is not None
    digest = hashlib.md5((banner.group(0) + SECRET_PW).encode()).hexdigest()
    assert c.cmd(f"APOP {SECRET_USER} {digest}").startswith("+OK sam@example.com")


def test_apop_off_by_default(server: LiveServer) -> None:
    c = Client(server.port())
    assert "<" not in c.greeting
    assert c.cmd(f"APOP {USER} {'0' * 32}") == "-ERR APOP is not enabled on this server"
    sasl_line = next(x for x in c.capa() if x.startswith("SASL "))
    assert "CRAM-MD5" not in sasl_line


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "SCRAM-SHA-256", "CRAM-MD5"])
def test_cancel_then_log_in(srv: LiveServer, mech: str) -> None:
    c = Client(srv.port())
    assert c.cmd(f"AUTH {mech}").startswith("+ ")
    assert c.cmd("*") == "-ERR authentication cancelled"
    assert plain(c, True).startswith("+OK")


def test_bad_base64(srv: LiveServer) -> None:
    c = Client(srv.port())
    assert c.cmd("AUTH PLAIN !!!notbase64") == "-ERR invalid base64 in initial response"
    assert c.cmd("AUTH PLAIN").startswith("+ ")
    assert c.cmd("a=b=c") == "-ERR invalid base64 in response"
    assert plain(c, False).startswith("+OK")


@pytest.mark.parametrize("command", ["AUTH", "AUTH "])
def test_bare_auth_lists_the_capa_mechanisms(srv: LiveServer, command: str) -> None:
    c = Client(srv.port())
    listing = c.multi(command)
    assert listing[0].startswith("+OK")
    sasl_line = next(x for x in c.capa() if x.startswith("SASL "))
    assert listing[1:] == sasl_line.split()[1:]
    assert set(listing[1:]) == {"SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"}
    assert "AUTH-RESP-CODE" in c.capa()


def test_plain_authzid_only_for_admins(srv: LiveServer) -> None:
    c = Client(srv.port())
    assert plain(c, True, authzid=SECRET_USER) == "-ERR [AUTH] authentication failed"
    assert plain(c, True, authzid=SECRET_USER, user="boss@example.com", pw="boss-pw").startswith(
        "+OK sam@example.com"
    )


def test_unknown_mechanism(srv: LiveServer) -> None:
    c = Client(srv.port())
    assert c.cmd("AUTH GSSAPI").startswith("-ERR unsupported authentication mechanism")
    assert plain(c, True).startswith("+OK")
