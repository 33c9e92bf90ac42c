"""What a reload takes from the re-read configuration file and what it leaves for a restart."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgpop import config
from cgpop.certgen import write_self_signed
from cgpop.penalty import Penalty, PenaltyPolicy
from cgpop.reload import changed_keys, reload_config, reloadable
from cgpop.tlsconf import from_config


@pytest.fixture(autouse=True)
def keep_log_level() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)
    logging.getLogger("mail.log").setLevel(logging.NOTSET)


def write(path: Path, pop3: str = "", server: str = "", extra: str = "") -> config.Config:
    path.write_text(
        f'[server]\ndata_dir = "data"\n{server}\n[pop3]\nlisten = ["127.0.0.1:0"]\n{pop3}\n{extra}'
    )
    return config.load(path)


def test_reloadable_keys() -> None:
    for key in ("pop3.max_channels", "pop3.max_per_ip", "pop3.max_per_account"):
        assert reloadable(key)
    for key in ("pop3.auth_delay", "pop3.auth_delay_max", "server.log_level", "tls.cert"):
        assert reloadable(key)
    for key in ("pop3.listen", "server.data_dir", "lmtp.listen", "delivery.duplicate_window"):
        assert not reloadable(key)


def test_changed_keys() -> None:
    a = config.from_dict({"pop3": {"max_per_ip": 5}})
    b = config.from_dict({"pop3": {"max_per_ip": 6, "listen": ["127.0.0.1:9"]}}, source="x")
    assert changed_keys(a, b) == ["pop3.listen", "pop3.max_per_ip"]
    assert changed_keys(a, a) == []


def test_limits_delay_and_level_applied_restart_keys_kept_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "cgpop.toml"
    current = write(f)
    penalty = Penalty(PenaltyPolicy(base=current.pop3.auth_delay))
    write(
        f,
        pop3=(
            "max_channels = 7\nmax_per_ip = 3\nmax_per_account = 2\n"
            "auth_delay = 1.5\nauth_delay_max = 9.0\nidle_timeout = 900\n"
        ),
        server='log_level = "WARNING"\nhostname = "other.example"',
    )
    caplog.set_level(logging.INFO, logger="cgpop")
    now = reload_config(current, tls=None, penalty=penalty)
    assert (now.pop3.max_channels, now.pop3.max_per_ip, now.pop3.max_per_account) == (7, 3, 2)
    assert (now.pop3.auth_delay, now.pop3.auth_delay_max) == (1.5, 9.0)
    assert (penalty.policy.base, penalty.policy.maximum) == (1.5, 9.0)
    penalty.record_failure("192.0.2.1")
    assert penalty.delay_for("192.0.2.1") == 1.5
    assert now.server.log_level == "WARNING"
    assert logging.getLogger().level == logging.WARNING
    # Not reloadable: the running values stay.
    assert now.pop3.idle_timeout == current.pop3.idle_timeout
    assert now.server.hostname == current.server.hostname
    messages = [r.getMessage() for r in caplog.records]
    assert (
        "reload: pop3.idle_timeout, server.hostname changed but need a restart; "
        "running with the old value until then" in messages
    )


def test_no_file_no_change(caplog: pytest.LogCaptureFixture) -> None:
    current = config.from_dict({}, source="<test>")
    caplog.set_level(logging.INFO, logger="cgpop")
    assert reload_config(current, tls=None, penalty=Penalty()) is not None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_adding_tls_needs_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "cgpop.toml"
    current = write(f)
    write_self_signed("localhost", tmp_path)
    write(f, extra='[tls]\ncert = "cert.pem"\nkey = "key.pem"\n')
    now = reload_config(current, tls=None, penalty=Penalty())
    assert now.tls.cert is None
    assert any(
        "tls.cert, tls.key changed but need a restart" in r.getMessage() for r in caplog.records
    )


def test_broken_certificate_keeps_old_tls_and_names_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "cgpop.toml"
    write_self_signed("localhost", tmp_path / "a")
    write_self_signed("localhost", tmp_path / "b")
    current = write(f, extra='[tls]\ncert = "a/cert.pem"\nkey = "a/key.pem"\n')
    tls = from_config(current)
    assert tls is not None
    old = tls.context
    (tmp_path / "b" / "key.pem").write_text("junk\n")
    write(f, extra='[tls]\ncert = "b/cert.pem"\nkey = "b/key.pem"\n')
    now = reload_config(current, tls=tls, penalty=Penalty())
    assert tls.context is old
    assert now.tls.cert == tmp_path / "a/cert.pem"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert f"{f}: tls.key: TLS key file {tmp_path / 'b/key.pem'}: not a PEM" in errors[0]
