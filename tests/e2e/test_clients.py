"""Real POP3 clients against a live server: curl (pop3://) and fetchmail."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import LiveServer, message
from tests.e2e.helpers import PASSWORD, USER, flags, pop

PREFIX = b"Return-Path: <sender@remote.test>\r\nX-Real-To: <joe@example.com>\r\n"


def curl(
    server: LiveServer, path: str, userpass: str, *options: str
) -> subprocess.CompletedProcess[bytes]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    url = f"pop3://{server.host}:{server.port('pop3')}/{path}"
    return subprocess.run(
        ["curl", "-s", "--max-time", "10", *options, url, "-u", userpass],
        capture_output=True,
        timeout=30,
        check=False,
    )


# A password mechanism chosen explicitly, besides curl's own choice.
SASL_LOGIN = ("--login-options", "AUTH=LOGIN")


@pytest.mark.parametrize(
    "options", [SASL_LOGIN, ("--login-options", "AUTH=PLAIN")], ids=["sasl-login", "sasl-plain"]
)
def test_curl_retrieves_a_message(server: LiveServer, options: tuple[str, ...]) -> None:
    original = message("for curl", ".a dotted line\nplain line\n")
    server.deliver(USER, original)
    server.deliver(USER, message("second"))
    done = curl(server, "1", f"{USER}:{PASSWORD}", *options)
    assert done.returncode == 0, done.stderr
    assert done.stdout == PREFIX + original.replace(b"\n", b"\r\n")
    assert flags(server, 1) == 1  # RETR by curl set \Seen
    listing = curl(server, "", f"{USER}:{PASSWORD}", *options)
    assert listing.returncode == 0
    sizes = [len(PREFIX + m.replace(b"\n", b"\r\n")) for m in (original, message("second"))]
    assert listing.stdout == f"1 {sizes[0]}\r\n2 {sizes[1]}\r\n".encode()


def test_curl_default_login_with_shared_secret_account(server: LiveServer) -> None:
    server.add_account("sam@example.com", "sampw", shared_secret=True)
    server.deliver("sam@example.com", message("for sam"))
    done = curl(server, "1", "sam@example.com:sampw")
    assert done.returncode == 0, done.stderr
    assert b"Subject: for sam\r\n" in done.stdout


def test_curl_default_login(server: LiveServer) -> None:
    """The README's command, with curl choosing its own mechanism: whatever the server offers
    must work for an account without a shared secret (curl never falls back)."""
    server.deliver(USER, message("plain curl"))
    done = curl(server, "1", f"{USER}:{PASSWORD}")
    assert done.returncode == 0
    assert b"Subject: plain curl\r\n" in done.stdout


@pytest.mark.parametrize("options", [(), SASL_LOGIN], ids=["default", "sasl-login"])
def test_curl_wrong_password(server: LiveServer, options: tuple[str, ...]) -> None:
    server.deliver(USER, message("secret stuff"))
    done = curl(server, "1", f"{USER}:wrong", *options)
    assert done.returncode == 67  # CURLE_LOGIN_DENIED
    assert b"secret stuff" not in done.stdout
    unknown = curl(server, "1", "nobody@example.com:secret", *options)
    assert unknown.returncode == 67


def fetchmail(
    server: LiveServer, home: Path, rcfile: Path, idfile: Path
) -> subprocess.CompletedProcess[str]:
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C",
        "FETCHMAILHOME": str(home),
    }
    return subprocess.run(
        # --sslproto '': fetchmail 6.4 tries STLS even when CAPA does not offer it and gives
        # up when refused; this server has no TLS configured, so ask for a plain session.
        [
            "fetchmail",
            "-f",
            str(rcfile),
            "--idfile",
            str(idfile),
            "-N",
            "--nosyslog",
            "--sslproto",
            "",
            "--uidl",
            "--keep",
            "--protocol",
            "POP3",
            "--port",
            str(server.port("pop3")),
            "--user",
            USER,
            server.host,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_fetchmail_uidl_run_then_nothing_new(server: LiveServer, tmp_path: Path) -> None:
    if shutil.which("fetchmail") is None:
        pytest.skip("fetchmail is not installed")
    for n in range(3):
        server.deliver(USER, message(f"fetch {n}", f"body {n}\n"))
    out_dir = tmp_path / "delivered"
    out_dir.mkdir()
    rcfile = tmp_path / ".fetchmailrc"
    # One file per message: fetchmail runs the MDA through sh once for each.
    rcfile.write_text(
        "set no bouncemail\n"
        f"poll {server.host} with protocol POP3 port {server.port('pop3')} uidl\n"
        f'  user "{USER}" there with password "{PASSWORD}" is "localuser" here\n'
        f'  options keep mda "cat > {out_dir}/msg.$$"\n'
    )
    rcfile.chmod(0o600)
    idfile = tmp_path / "fetchids"

    first = fetchmail(server, tmp_path, rcfile, idfile)
    assert first.returncode == 0, first.stdout + first.stderr
    got = sorted(out_dir.iterdir())
    assert len(got) == 3
    subjects = sorted(
        line for p in got for line in p.read_bytes().splitlines() if line.startswith(b"Subject:")
    )
    assert subjects == [b"Subject: fetch 0", b"Subject: fetch 1", b"Subject: fetch 2"]
    assert all(b"X-Real-To: <joe@example.com>" in p.read_bytes() for p in got)
    assert idfile.exists()

    second = fetchmail(server, tmp_path, rcfile, idfile)
    assert second.returncode == 1, second.stdout + second.stderr  # PS_NOMAIL
    assert len(list(out_dir.iterdir())) == 3

    # `keep`: everything is still on the server; new mail is fetched, only that.
    server.deliver(USER, message("fetch 3"))
    third = fetchmail(server, tmp_path, rcfile, idfile)
    assert third.returncode == 0, third.stdout + third.stderr
    new = set(out_dir.iterdir()) - set(got)
    assert len(new) == 1
    assert b"Subject: fetch 3" in new.pop().read_bytes()
    client = pop(server)
    try:
        assert client.stat()[0] == 4
    finally:
        client.quit()
