"""Configuration loading: the sample file, defaults, and errors that name file and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cgpop import config

SAMPLE = Path(__file__).resolve().parent.parent / "conf" / "cgpop.toml"


def test_builtin_defaults_need_no_root() -> None:
    cfg = config.load(None)
    ports = [ep.port for ep in cfg.pop3.listen + cfg.lmtp.listen]
    assert ports and all(p >= 1024 for p in ports)
    assert cfg.server.data_dir == Path("cgpop-data")


def test_sample_documents_the_defaults() -> None:
    """Every key the sample sets is the built-in default (except paths and the hostname)."""
    sample = config.load(SAMPLE)
    default = config.Config()
    for section in ("pop3", "lmtp", "delivery", "xtnd", "store", "metrics"):
        assert getattr(sample, section) == getattr(default, section), section
    fields = {f.name for f in dataclasses.fields(config.ServerConfig)}
    for name in fields - {"hostname", "data_dir", "default_domain"}:
        assert getattr(sample.server, name) == getattr(default.server, name), name


def test_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[server]\ndefault_domain = "Client1.COM"\n')
    monkeypatch.setenv("CGPOP_CONFIG", str(f))
    assert config.load().server.default_domain == "client1.com"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[pop3]\nlisten = ['nope']\n", "pop3.listen: expected host:port"),
        ("[pop3]\nidle_timeout = 60\n", "pop3.idle_timeout: RFC 1939"),
        ("[pop3]\nmax_channels = 'x'\n", "pop3.max_channels: expected int"),
        ("[pop3]\nplaintext_auth = 'never'\n", "pop3.plaintext_auth"),
        ("[pop3]\nbogus = 1\n", "pop3.bogus: unknown key"),
        ("[nope]\n", "[nope]: unknown section"),
        ("[tls]\ncert = 'a.pem'\n", "tls.key: cert and key go together"),
        ("[pop3]\ntls_listen = ['127.0.0.1:995']\n", "pop3.tls_listen: needs [tls]"),
        ("[xtnd]\nrelay = 'smtp'\n", "xtnd.relay"),
        ("[store]\nbackend = 'oracle'\n", "store.backend: unknown store backend 'oracle'"),
        ("[metrics]\nlisten = 'localhost'\n", "metrics.listen: expected host:port"),
        ("[metrics]\nlisten = 9110\n", "metrics.listen: expected str"),
        ("[metrics]\nport = 9110\n", "metrics.port: unknown key"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(config.ConfigError) as info:
        config.load(f)
    assert str(f) in str(info.value)
    assert fragment in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.toml")


def test_ipv6_endpoint() -> None:
    assert config.parse_endpoint("[::1]:110") == config.Endpoint("::1", 110)


def test_metrics_listen() -> None:
    assert config.Config().metrics.listen is None  # off by default
    cfg = config.from_dict({"metrics": {"listen": "127.0.0.1:9110"}})
    assert cfg.metrics.listen == config.Endpoint("127.0.0.1", 9110)
    assert config.from_dict({"metrics": {"listen": ""}}).metrics.listen is None


def test_workers_is_a_count_or_auto() -> None:
    assert config.from_dict({}).server.workers == 1  # one process unless asked
    assert config.from_dict({"server": {"workers": 4}}).server.workers == 4
    assert config.from_dict({"server": {"workers": "auto"}}).server.workers == "auto"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0, 'expected a positive number or "auto"'),
        ("all", 'expected a positive number or "auto"'),
        (True, 'expected a positive number or "auto"'),
        (2.0, 'expected a positive number or "auto"'),
        (10_000, "at most 256"),
    ],
)
def test_workers_refuses_anything_else(value: object, reason: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.from_dict({"server": {"workers": value}})
    assert str(err.value) == f"<dict>: server.workers: {reason}"


def test_metrics_with_several_workers_is_accepted() -> None:
    """One summed /metrics for the whole server (tests/e2e/test_workers_live.py)."""
    cfg = config.from_dict({"server": {"workers": 2}, "metrics": {"listen": "127.0.0.1:9110"}})
    assert cfg.server.workers == 2 and str(cfg.metrics.listen) == "127.0.0.1:9110"
