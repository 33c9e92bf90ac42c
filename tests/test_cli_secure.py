"""`cgpop cert` and `cgpop alert` through the real argument parser and a data directory."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from cgpop.cli import main


@pytest.fixture
def conf(tmp_path: Path) -> str:
    path = tmp_path / "cgpop.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    assert main(["-c", str(path), "domain", "add", "example.com"]) == 0
    assert main(["-c", str(path), "account", "add", "joe@example.com", "--password", "pw"]) == 0
    return str(path)


def test_cert_writes_a_usable_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cert", "--host", "mail.example.test", "--out", str(tmp_path / "tls")]) == 0
    printed = capsys.readouterr().out
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    assert str(cert) in printed and str(key) in printed
    assert key.stat().st_mode & 0o777 == 0o600
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)


def test_cert_bad_host(tmp_path: Path) -> None:
    assert main(["cert", "--host", "bad host!", "--out", str(tmp_path)]) == 2


def test_alert_add_list_remove(conf: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", conf, "alert", "add", "joe@example.com", "hello joe"]) == 0
    assert main(["-c", conf, "alert", "add", "--domain", "example.com", "hello domain"]) == 0
    assert main(["-c", conf, "alert", "add", "--server", "hello all"]) == 0
    capsys.readouterr()
    assert main(["-c", conf, "alert", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["scope"], r["target"], r["text"]) for r in rows] == [
        ("account", "joe@example.com", "hello joe"),
        ("domain", "example.com", "hello domain"),
        ("server", "", "hello all"),
    ]
    assert main(["-c", conf, "alert", "remove", str(rows[0]["id"])]) == 0
    assert main(["-c", conf, "alert", "remove", str(rows[0]["id"])]) == 1
    assert main(["-c", conf, "alert", "list"]) == 0
    text = capsys.readouterr().out
    assert "hello joe" not in text and "hello domain" in text


@pytest.mark.parametrize(
    "args",
    [
        ["joe@example.com", "two\nlines"],
        ["joe@example.com", "nul\0"],
        ["joe@example.com", "x" * 495],
        ["joe@example.com", "   "],
        ["--server"],
        ["--server", "joe@example.com", "text"],
        ["joe@example.com"],
    ],
)
def test_alert_add_refuses_bad_input(conf: str, args: list[str]) -> None:
    try:
        code = main(["-c", conf, "alert", "add", *args])
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    assert code == 2


def test_alert_add_unknown_targets(conf: str) -> None:
    assert main(["-c", conf, "alert", "add", "nobody@example.com", "x"]) == 1
    assert main(["-c", conf, "alert", "add", "--domain", "nowhere.test", "x"]) == 1


@pytest.mark.parametrize("command", [["alert", "remove"], ["queue", "remove"]])
@pytest.mark.parametrize("value", ["99999999999999999999", "0", "-1", "x"])
def test_ids_out_of_range_are_usage_errors(
    conf: str, command: list[str], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["-c", conf, *command, "--", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "expected a positive id" in err and "Traceback" not in err


def test_alert_text_limit_is_in_octets(conf: str, capsys: pytest.CaptureFixture[str]) -> None:
    limit = 512 - len("-ERR [SYS/TEMP] ") - 2
    assert main(["-c", conf, "alert", "add", "--server", "x" * limit]) == 0
    assert main(["-c", conf, "alert", "add", "--server", "x" * (limit + 1)]) == 2
    # 165 euro signs are 495 octets: too long although only 165 characters.
    assert main(["-c", conf, "alert", "add", "--server", "\u20ac" * 165]) == 2
    assert main(["-c", conf, "alert", "add", "--server", "\u20ac" * 164]) == 0
    assert "octets" in capsys.readouterr().err


def test_alert_list_counts_deliveries(conf: str, capsys: pytest.CaptureFixture[str]) -> None:
    from cgpop.store.sqlite import SqliteStore

    assert main(["-c", conf, "alert", "add", "--server", "one"]) == 0
    data = Path(conf).parent / "data"
    store = SqliteStore(data)
    assert store.take_alert("joe@example.com") is not None
    store.close()
    capsys.readouterr()
    assert main(["-c", conf, "alert", "list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["delivered"] == 1 and row["text"] == "one"


def test_unusable_data_directory_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    conf = tmp_path / "c.toml"
    conf.write_text(f'[server]\ndata_dir = "{blocker / "data"}"\n')
    assert main(["-c", str(conf), "domain", "list"]) == 75
    err = capsys.readouterr().err
    assert "cannot use the data directory" in err and "Traceback" not in err
