"""`cgpop sessions` and `cgpop telemetry` (issue 12, section 3) against live servers: real
poplib and raw sessions, the CLI as a subprocess on the same store, on SQLite and on two
PostgreSQL nodes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import LiveServer, message
from tests.e2e.helpers import TIMEOUT, USER, Raw, pop, uids, wait_sessions_closed
from tests.e2e.test_lifecycle import serve, setup_joe

CGPOP = [sys.executable, "-m", "cgpop"]
FIELDS = {"id", "node", "peer", "login", "account", "mailbox", "state", "since", "sent_bytes"}
KILLED = b"-ERR [SYS/TEMP] session closed by the administrator\r\n"
Factory = Callable[..., LiveServer]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CGPOP_CONFIG"}
    return subprocess.run(
        [*CGPOP, *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def cli_json(config: Path, *args: str) -> Any:
    done = cli(config, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def on_loop(server: LiveServer, coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, server.loop).result(2 * TIMEOUT)


def flushed(server: LiveServer) -> None:
    """The registry rows of this server's sessions written now (else at the next sweep)."""
    on_loop(server, server.gateway.live.flush(progress=True))


def sqlite_config(tmp_path: Path, server: LiveServer) -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(f'[server]\ndata_dir = "{server.config.server.data_dir}"\n')
    return path


def test_sessions_lists_and_kill_closes_without_expunge(server: LiveServer, tmp_path: Path) -> None:
    server.add_account("ann@example.com", "secret")
    for n in range(3):
        server.deliver(USER, message(f"m{n}"))
    config = sqlite_config(tmp_path, server)
    assert cli_json(config, "sessions") == []
    victim = Raw(server)
    assert victim.login().startswith(b"+OK")
    other = pop(server, "ann@example.com")
    victim.cmd("RETR 1")
    body = victim.multi()
    flushed(server)
    rows = {r["account"]: r for r in cli_json(config, "sessions")}
    assert set(rows) == {USER, "ann@example.com"}
    joe = rows[USER]
    assert FIELDS | {"tls"} == set(joe)
    assert (joe["login"], joe["mailbox"], joe["state"], joe["tls"]) == (
        USER,
        "INBOX",
        "TRANSACTION",
        False,
    )
    assert joe["peer"].startswith("127.0.0.1:")
    assert joe["sent_bytes"] >= sum(len(line) for line in body)
    assert joe["id"] != rows["ann@example.com"]["id"]
    # The text listing names the same sessions.
    text = cli(config, "sessions").stdout
    assert joe["id"] in text and rows["ann@example.com"]["id"] in text

    assert victim.cmd("DELE 1").startswith(b"+OK")
    assert victim.cmd("DELE 2").startswith(b"+OK")
    done = cli(config, "sessions", "kill", joe["id"])
    assert done.returncode == 0, done.stderr
    # The serving process picks the request up within its poll interval.
    assert victim.line() == KILLED
    assert victim.at_eof()
    victim.close()
    wait_sessions_closed(server, remaining=1)
    assert len(uids(server)) == 3  # the DELEs were not committed
    assert other.stat()[0] == 0  # the other session goes on
    flushed(server)
    assert [r["account"] for r in cli_json(config, "sessions")] == ["ann@example.com"]
    gone = cli(config, "sessions", "kill", joe["id"])
    assert gone.returncode == 1 and f"no such session: {joe['id']}" in gone.stderr
    other.quit()


def test_telemetry_transcript_with_redaction_and_cut(server: LiveServer, tmp_path: Path) -> None:
    server.add_account("ann@example.com", "secret")
    for n in range(25):
        server.deliver(USER, message(f"m{n}", "line\n" * (30 if n == 0 else 1)))
    config = sqlite_config(tmp_path, server)
    assert cli(config, "telemetry", "on", "JOE@example.com").returncode == 0
    assert cli_json(config, "telemetry", "list") == [USER]
    on_loop(server, server.gateway.live.poll())  # what the poll task does every second
    with Raw(server) as raw:
        assert raw.login().startswith(b"+OK")
        first = raw.cmd("LIST")
        listing = raw.multi()
        raw.cmd("RETR 1")
        retr = raw.multi()
        assert raw.cmd("QUIT").startswith(b"+OK")
    plain = base64.b64encode(b"\0joe@example.com\0secret").decode()
    with Raw(server) as raw:
        assert raw.cmd("AUTH PLAIN").startswith(b"+ ")
        assert raw.cmd(plain).startswith(b"+OK")
        assert raw.cmd("QUIT").startswith(b"+OK")
    with Raw(server) as raw:  # not traced
        assert raw.login("ann@example.com").startswith(b"+OK")
        assert raw.cmd("QUIT").startswith(b"+OK")
    wait_sessions_closed(server)
    server.gateway.telemetry.drain()
    root = Path(server.config.server.data_dir) / "telemetry"
    assert [p.name for p in root.iterdir()] == [USER]
    files = sorted((root / USER).iterdir())
    assert len(files) == 2
    texts = [f.read_text() for f in files]
    assert all("secret" not in t and plain not in t for t in texts)
    by_kind = {("AUTH" in t): t for t in texts}
    password, sasl = by_kind[False], by_kind[True]
    lines = [line.split(" ", 1)[1] for line in password.splitlines()]
    assert lines[:4] == [
        "S: +OK test.local cgpop POP3 ready",
        f"C: USER {USER}",
        lines[2],
        "C: PASS ***",
    ]
    assert lines[2].startswith("S: +OK")
    # LIST: status and 19 lines, then the octets of the rest (6 lines and the terminator).
    at = lines.index("C: LIST")
    reply = [first, *listing, b".\r\n"]
    assert lines[at + 1 : at + 21] == [f"S: {r.decode().rstrip()}" for r in reply[:20]]
    assert lines[at + 21] == f"S: [... {sum(len(r) for r in reply[20:])} more octets]"
    assert lines[at + 22] == "C: RETR 1"
    whole = b"".join([b"+OK", *retr, b".\r\n"])
    assert lines[at + 43].startswith("S: [... ") and len(retr) > 25
    assert lines[-2:] == ["C: QUIT", lines[-1]] and lines[-1].startswith("S: +OK")
    assert whole  # RETR's full reply was sent, only the transcript is cut
    sasl_lines = [line.split(" ", 1)[1] for line in sasl.splitlines()]
    assert "C: AUTH PLAIN" in sasl_lines and "C: ***" in sasl_lines
    # Every line starts with its time.
    assert all(line[:2] == "20" and line[23] == "Z" for line in password.splitlines())
    assert cli(config, "telemetry", "off", USER).returncode == 0
    assert cli_json(config, "telemetry", "list") == []
    unknown = cli(config, "telemetry", "on", "nobody@example.com")
    assert unknown.returncode == 1 and "no such account: nobody@example.com" in unknown.stderr
    again = cli(config, "telemetry", "off", USER)
    assert again.returncode == 1 and f"telemetry is not on for {USER}" in again.stderr


def pg_nodes(server_factory: Factory, tmp_path: Path, dsn: str) -> list[LiveServer]:
    out = []
    for name in ("pop-a", "pop-b"):
        (tmp_path / name).mkdir()
        out.append(
            server_factory(
                tmp_path / name,
                store={"backend": "postgresql", "dsn": dsn, "node": name, "pool_size": 4},
            )
        )
    out[0].add_account(USER, "secret")
    return out


def test_sessions_of_every_node_on_postgresql(
    pg_dsn: str, server_factory: Factory, tmp_path: Path
) -> None:
    a, b = pg_nodes(server_factory, tmp_path, pg_dsn)
    a.deliver(USER, message("one"))
    config = tmp_path / "cli.toml"
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "cli"}"\n'
        f'[store]\nbackend = "postgresql"\ndsn = "{pg_dsn}"\nnode = "cli"\n'
    )
    on_a = pop(a)
    on_b = Raw(b)
    assert on_b.login().startswith(b"+OK")
    flushed(a)
    flushed(b)
    rows = cli_json(config, "sessions")
    assert sorted(r["node"] for r in rows) == ["pop-a", "pop-b"]
    victim = next(r for r in rows if r["node"] == "pop-b")
    assert on_b.cmd("DELE 1").startswith(b"+OK")
    assert cli(config, "sessions", "kill", victim["id"]).returncode == 0
    assert on_b.line() == KILLED
    on_b.close()
    wait_sessions_closed(b)
    assert on_a.stat()[0] == 1
    flushed(b)
    assert [r["node"] for r in cli_json(config, "sessions")] == ["pop-a"]
    on_a.quit()


def until(check: Callable[[], Any], seconds: float = 30.0) -> Any:
    """Re-run `check` (a CLI listing: each run takes a process start) until it is truthy."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found


def test_separate_serving_processes_share_one_sqlite_registry(tmp_path: Path) -> None:
    """As `[server] workers` runs them: two `cgpop serve` processes on one data directory.
    Each lists the other's sessions, a kill reaches the process that serves the session, and
    the rows of a process killed with SIGKILL are not listed."""
    conf = tmp_path / "cgpop.toml"
    conf.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\ndefault_domain = "example.com"\n'
        'shutdown_grace = 3\n[pop3]\nlisten = ["127.0.0.1:0"]\n[lmtp]\nlisten = []\n'
    )
    env = {**os.environ, "CGPOP_CONFIG": str(conf)}
    setup_joe(env, "one")
    procs = [serve(env) for _ in range(2)]
    try:
        clients = []
        for _, ports in procs:
            raw = Raw.at(ports["POP3"])
            assert raw.login().startswith(b"+OK")
            clients.append(raw)
        rows = until(lambda: len(ok := cli_json(conf, "sessions")) == 2 and ok)
        assert rows and len({r["id"] for r in rows}) == 2
        # Session ids carry the serving process's pid (hex) first.
        by_pid = {int(r["id"].split("-")[0][:-8], 16): r["id"] for r in rows}
        first, second = procs[0][0], procs[1][0]
        assert set(by_pid) == {first.pid, second.pid}
        assert clients[1].cmd("DELE 1").startswith(b"+OK")
        assert cli(conf, "sessions", "kill", by_pid[second.pid]).returncode == 0
        assert clients[1].line() == KILLED
        assert clients[0].cmd("NOOP").startswith(b"+OK")  # the other process's session stays
        first.kill()
        first.wait(10)
        assert until(lambda: cli_json(conf, "sessions") == [])
        listed = cli(conf, "mailbox", "show", USER, "INBOX", "--json")
        assert len(json.loads(listed.stdout)) == 1  # the killed session's DELE not committed
        for raw in clients:
            raw.close()
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            assert proc.stderr is not None
            proc.stderr.close()
