"""`[lmtp] listen` with `unix:/path` and `[lmtp] allow_from`: what loads, and errors that name
the file, the key and the reason."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cgpop import config
from cgpop.config import Endpoint, UnixSocket


def load(tmp_path: Path, text: str) -> config.Config:
    f = tmp_path / "cgpop.toml"
    f.write_text(text)
    return config.load(f)


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, text)
    return str(info.value)


def test_defaults_are_loopback_tcp() -> None:
    lmtp = config.Config().lmtp
    assert lmtp.listen == (Endpoint("127.0.0.1", 2400),)
    assert lmtp.allow_from == ("127.0.0.0/8", "::1/128")


def test_unix_and_tcp_listeners(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[lmtp]\nlisten = ["unix:/run/cgpop/lmtp.sock", "127.0.0.1:2400", "unix:rel.sock"]\n',
    )
    assert cfg.lmtp.listen == (
        UnixSocket(Path("/run/cgpop/lmtp.sock")),
        Endpoint("127.0.0.1", 2400),
        UnixSocket(tmp_path / "rel.sock"),  # relative to the configuration file, as data_dir
    )
    assert str(cfg.lmtp.listen[0]) == "unix:/run/cgpop/lmtp.sock"


def test_existing_socket_is_accepted(tmp_path: Path) -> None:
    """A stale socket from a crash is no configuration error: the server replaces it."""
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
    cfg = load(tmp_path, f'[lmtp]\nlisten = ["unix:{path}"]\n')
    assert cfg.lmtp.listen == (UnixSocket(path),)


def test_allow_from_canonical(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[lmtp]\nallow_from = ["10.1.0.0/16", "192.0.2.7", "fd00::/8"]\n')
    assert cfg.lmtp.allow_from == ("10.1.0.0/16", "192.0.2.7/32", "fd00::/8")


def test_empty_allow_from_with_only_a_unix_socket(tmp_path: Path) -> None:
    cfg = load(tmp_path, f'[lmtp]\nlisten = ["unix:{tmp_path}/l.sock"]\nallow_from = []\n')
    assert cfg.lmtp.allow_from == ()


def test_path_that_is_not_a_socket(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("precious")
    text = error(tmp_path, f'[lmtp]\nlisten = ["unix:{tmp_path}/file"]\n')
    assert text.startswith(f"{tmp_path}/cgpop.toml: lmtp.listen: ")
    assert "exists and is not a socket" in text
    assert (tmp_path / "file").read_text() == "precious"


@pytest.mark.parametrize(
    "value, reason",
    [
        ('["unix:"]', "expected unix:/path/to/socket"),
        (f'["unix:/{"x" * 120}"]', "at most 107 bytes (sun_path)"),
        ('["unix:/a.sock", "unix:/a.sock"]', "listed twice"),
        ('["localhost"]', "expected host:port, got 'localhost' or unix:/path"),
    ],
)
def test_bad_listen(tmp_path: Path, value: str, reason: str) -> None:
    text = error(tmp_path, f"[lmtp]\nlisten = {value}\n")
    assert text.startswith(f"{tmp_path}/cgpop.toml: lmtp.listen: "), text
    assert reason in text


@pytest.mark.parametrize(
    "value, reason",
    [
        ('["10.0.0.1/8"]', "10.0.0.1/8 has host bits set"),
        ('["mx.example.com"]', "not an address or CIDR network"),
        ('"127.0.0.1"', "expected list"),
        ("[]", "every TCP peer would be refused"),
    ],
)
def test_bad_allow_from(tmp_path: Path, value: str, reason: str) -> None:
    text = error(tmp_path, f"[lmtp]\nallow_from = {value}\n")
    assert text.startswith(f"{tmp_path}/cgpop.toml: lmtp.allow_from: "), text
    assert reason in text
