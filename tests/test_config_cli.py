"""Configuration errors stop the `cgpop` command itself (issue 10, defect 8): every bad value
is reported as file, key and reason on stderr, with a non-zero exit and no traceback, before
`cgpop serve` opens a listener. Run through the real entry point, as an operator would."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cgpop.certgen import write_self_signed
from cgpop.logs import _SyslogHandler

EX_USAGE = 2


def config_text(tmp_path: Path, *, server: str = "", pop3: str = "", extra: str = "") -> str:
    return (
        f'[server]\ndata_dir = "{tmp_path / "data"}"\n{server}\n'
        f'[pop3]\nlisten = ["127.0.0.1:0"]\n{pop3}\n'
        f"[lmtp]\nlisten = []\n{extra}\n"
    )


def tls(cert: str, key: str) -> str:
    return f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'


# (id, how the file is made, the key named, a fragment of the reason)
VARIANTS: list[tuple[str, dict[str, str], str | None, str]] = [
    ("cert-missing", {"extra": tls("{dir}/nope.pem", "{dir}/key.pem")}, "tls.cert", "nope.pem"),
    ("cert-not-pem", {"extra": tls("{dir}/junk.pem", "{dir}/key.pem")}, "tls.cert", "not a PEM"),
    ("key-not-pem", {"extra": tls("{dir}/cert.pem", "{dir}/junk.pem")}, "tls.key", "not a PEM"),
    ("key-missing", {"extra": tls("{dir}/cert.pem", "{dir}/nope.pem")}, "tls.key", "nope.pem"),
    ("swapped", {"extra": tls("{dir}/key.pem", "{dir}/cert.pem")}, "tls.cert", "swapped"),
    ("retry-inf", {"extra": "[xtnd]\nretry_schedule = [60, inf]"}, "xtnd.retry_schedule", "inf"),
    ("retry-huge", {"extra": "[xtnd]\nretry_schedule = [1e300]"}, "xtnd.retry_schedule", "ten"),
    ("queue-age-inf", {"extra": "[xtnd]\nmax_queue_age = inf"}, "xtnd.max_queue_age", "finite"),
    ("dns-not-ip", {"extra": '[xtnd]\ndns_servers = ["not-an-ip"]'}, "xtnd.dns_servers", "IP"),
    ("grace-nan", {"server": "shutdown_grace = nan"}, "server.shutdown_grace", "finite"),
    ("poll-nan", {"extra": "[xtnd]\nqueue_poll_interval = nan"}, "xtnd.queue_poll_interval", "nan"),
    ("idle-nan", {"pop3": "idle_timeout = nan"}, "pop3.idle_timeout", "finite"),
    ("idle-inf", {"pop3": "idle_timeout = inf"}, "pop3.idle_timeout", "finite"),
    ("hostname-crlf", {"server": 'hostname = "mx\\r\\nX-Evil: 1"'}, "server.hostname", "CR, LF"),
    ("hostname-space", {"server": 'hostname = "mx evil"'}, "server.hostname", "not a host name"),
    ("real-to-lf", {"pop3": 'real_to_header = "X-Real\\nTo"'}, "pop3.real_to_header", "CR, LF"),
    ("real-to-colon", {"pop3": 'real_to_header = "X-Real:To"'}, "pop3.real_to_header", "field"),
    (
        "relay-password-cr",
        {"extra": '[xtnd]\nrelay_password = "a\\rb"'},
        "xtnd.relay_password",
        "CR",
    ),
    (
        "syslog-socket",
        {"server": 'syslog = true\nsyslog_socket = "{tmp}/no-such.sock"'},
        "server.syslog_socket",
        "no-such.sock",
    ),
    ("not-utf8", {}, None, "not UTF-8"),
]


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("pems")
    write_self_signed("localhost", where)
    (where / "junk.pem").write_text("not a certificate\n")
    return where


def make_config(tmp_path: Path, pems: Path, parts: dict[str, str]) -> Path:
    conf = tmp_path / "cgpop.toml"
    if not parts:
        conf.write_bytes(b'[server]\nhostname = "caf\xe9.example"\n')  # Latin-1, not UTF-8
        return conf
    filled = {
        k: v.replace("{dir}", str(pems)).replace("{tmp}", str(tmp_path)) for k, v in parts.items()
    }
    conf.write_text(config_text(tmp_path, **filled))
    return conf


def serve(conf: Path) -> tuple[int, str]:
    """Run `cgpop serve`; stop it if it gets as far as a listener (or a logged traceback)."""
    env = {k: v for k, v in os.environ.items() if k != "CGPOP_CONFIG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cgpop", "serve", "-c", str(conf)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "listening on" in line or "Traceback" in line:
            proc.terminate()
            break
    lines.append(proc.stderr.read())
    proc.stderr.close()
    return proc.wait(30), "".join(lines)


@pytest.mark.parametrize(
    "parts, key, reason", [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS]
)
def test_serve_refuses_bad_config(
    tmp_path: Path, pems: Path, parts: dict[str, str], key: str | None, reason: str
) -> None:
    conf = make_config(tmp_path, pems, parts)
    code, stderr = serve(conf)
    assert "Traceback" not in stderr and "listening on" not in stderr, stderr
    assert code == EX_USAGE, stderr
    assert f"cgpop: configuration error: {conf}: " in stderr
    if key is not None:
        assert f": {key}: " in stderr
    assert reason in stderr


@pytest.mark.parametrize("name", ["swapped", "idle-inf", "hostname-crlf", "not-utf8"])
def test_other_commands_refuse_bad_config(tmp_path: Path, pems: Path, name: str) -> None:
    """Not only `serve`: an administration command loads the same file and stops the same way."""
    parts, key, _ = next(v[1:] for v in VARIANTS if v[0] == name)
    conf = make_config(tmp_path, pems, parts)
    out = subprocess.run(
        [sys.executable, "-m", "cgpop", "domain", "list", "-c", str(conf)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == EX_USAGE and "Traceback" not in out.stderr
    assert str(conf) in out.stderr and (key is None or key in out.stderr)


def test_good_tls_config_is_accepted(tmp_path: Path, pems: Path) -> None:
    conf = tmp_path / "cgpop.toml"
    conf.write_text(config_text(tmp_path, extra=tls(f"{pems}/cert.pem", f"{pems}/key.pem")))
    out = subprocess.run(
        [sys.executable, "-m", "cgpop", "domain", "list", "-c", str(conf)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_lost_syslog_daemon_is_one_line_not_a_traceback_per_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "log.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    handler = _SyslogHandler(address=path)
    record = logging.LogRecord("cgpop", logging.INFO, __file__, 1, "hello", None, None)
    handler.handle(record)
    assert b"hello" in sink.recv(4096)
    sink.close()
    os.unlink(path)
    for _ in range(3):
        handler.handle(record)
    handler.close()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("cannot send records") == 1
