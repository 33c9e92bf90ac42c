"""The `cgpop` CLI on `[store] backend = "postgresql"` (issue 11): a fresh database gets its
schema from the first command, and an unreachable one is a temporary failure with a clear
message, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CGPOP = [sys.executable, "-m", "cgpop"]


def cli(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CGPOP, "-c", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def config(tmp_path: Path, dsn: str) -> Path:
    path = tmp_path / "cgpop.toml"
    path.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\ndefault_domain = "example.com"\n'
        f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\nnode = "cli"\n'
    )
    return path


def test_commands_on_a_fresh_database(tmp_path: Path, pg_dsn: str) -> None:
    conf = config(tmp_path, pg_dsn)
    assert cli(conf, "domain", "add", "example.com").returncode == 0  # made the schema
    assert cli(conf, "account", "add", "joe@example.com", "--password", "pw").returncode == 0
    done = cli(conf, "deliver", "joe@example.com", stdin="Subject: hi\n\nbody\n")
    assert done.returncode == 0, done.stderr
    shown = cli(conf, "mailbox", "show", "joe@example.com", "INBOX", "--json")
    assert '"uid": 1' in shown.stdout
    assert not (tmp_path / "data").exists()  # nothing node-local for the CLI to keep


def test_deliver_to_an_unreachable_database_exits_75(tmp_path: Path) -> None:
    conf = config(tmp_path, "postgresql://cgpop@127.0.0.1:1/cgpop?connect_timeout=1")
    done = cli(conf, "deliver", "joe@example.com", stdin="Subject: hi\n\nbody\n")
    assert done.returncode == 75
    assert "cgpop: cannot use the database: database unreachable" in done.stderr
    assert "Traceback" not in done.stderr
