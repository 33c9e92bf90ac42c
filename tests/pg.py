"""A throwaway PostgreSQL server for the tests (issue 11): Debian's `initdb` and `pg_ctl` into a
temporary directory, on 127.0.0.1 and a free port, its unix socket inside that directory.

PostgreSQL refuses to run as root, so when the tests run as root (CI does) the server runs as
the `postgres` user that Debian's package creates. cgpop connects as `cgpop`, a role without
superuser rights that owns the database `cgpop`, as a provider's deployment would.

PostgreSQL missing is a failure, not a skip: `.ci/run` installs it, so a test run that cannot
find it is broken and must say so.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_INSTALL_HINT = "PostgreSQL is not installed: apt-get install postgresql (see .ci/run)"
# A test server: durability is not under test here, speed on 2 cores is. (The bench passes its
# own settings: bench/pgcluster.py.)
TEST_OPTIONS = "-c fsync=off -c full_page_writes=off -c max_connections=200"


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl: `pg_config --bindir`, else Debian's layout."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    # Newest major version first: /usr/lib/postgresql/15/bin, /usr/lib/postgresql/16/bin...
    candidates += sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    raise RuntimeError(_INSTALL_HINT)


def _free_port() -> int:
    # PostgreSQL needs a port number up front (it cannot bind port 0 and report it back); a
    # clash with another process in the meantime is retried by start().
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    bindir: Path
    root: Path
    port: int
    run_as: dict[str, Any]
    options: str = TEST_OPTIONS  # postgres -c settings, given to pg_ctl start

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @property
    def dsn(self) -> str:
        """What cgpop's `[store] dsn` would hold: the non-superuser role on its own database."""
        return f"postgresql://cgpop@127.0.0.1:{self.port}/cgpop"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, capture_output=True, text=True, check=False, cwd=self.root, **self.run_as
        )

    def start(self, *, same_port: bool = False) -> None:
        """Start the server on a free port, or (`same_port`: a restart after `stop`) on the
        port it had, as a database coming back after an outage would."""
        log = self.root / "server.log"
        for _attempt in range(1 if same_port else 5):
            if not same_port:
                self.port = _free_port()
            opts = f"-h 127.0.0.1 -p {self.port} -k {self.root} {self.options}"
            done = self._run(
                str(self.bindir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.datadir),
                "-l",
                str(log),
                "-o",
                opts,
            )
            if done.returncode == 0:
                return
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            if same_port or ("could not bind" not in tail and "in use" not in tail):
                raise RuntimeError(f"pg_ctl start failed: {done.stderr}\n{tail}")
        raise RuntimeError("pg_ctl start: no free port after 5 attempts")

    def stop(self, mode: str = "immediate") -> None:
        """`pg_ctl stop -m MODE`: "immediate" drops every connection at once without a
        goodbye (a crash, as far as clients can tell); "fast" ends them with an error first.
        Waits until the server is down: its port then refuses connections."""
        self._run(str(self.bindir / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.datadir))

    def running(self) -> bool:
        return (
            self._run(str(self.bindir / "pg_ctl"), "status", "-D", str(self.datadir)).returncode
            == 0
        )

    def admin(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            for sql in statements:
                conn.execute(sql.encode())


def start_postgres(options: str = TEST_OPTIONS) -> PgServer:
    bindir = find_bindir()
    root = Path(tempfile.mkdtemp(prefix="cgpop-pg-"))
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError(f"running as root and no postgres user. {_INSTALL_HINT}") from None
        os.chown(root, pw.pw_uid, pw.pw_gid)
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    server = PgServer(bindir, root, 0, run_as, options)
    init = server._run(
        str(bindir / "initdb"),
        "-D",
        str(server.datadir),
        "-U",
        "postgres",
        "--auth=trust",
        "--no-sync",
        "-E",
        "UTF8",
        "--locale=C",
    )
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr}")
    server.start()
    server.admin(
        "CREATE ROLE cgpop LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE",
        "CREATE DATABASE cgpop OWNER cgpop",
    )
    return server


def remove_postgres(server: PgServer) -> None:
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PgServer]:
    """A PostgreSQL server of the caller's own (initdb, start; stopped and removed at the
    end), for a test that stops and restarts it: the session-wide one is shared by every
    other test and must stay up."""
    server = start_postgres()
    try:
        yield server
    finally:
        remove_postgres(server)


# --- pytest fixtures (import them into a conftest.py that needs PostgreSQL) ---

_schemas = iter(range(1, 1_000_000))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole test session."""
    try:
        server = start_postgres()
    except RuntimeError as exc:
        missing = str(exc)
    else:
        missing = ""
    if missing:
        pytest.fail(missing, pytrace=False)  # a failure, not a skip: CI installs PostgreSQL
    try:
        yield server
    finally:
        remove_postgres(server)


def new_schema_dsn(server: PgServer) -> str:
    """A DSN onto a new empty schema (cheaper than a database per test), owned by the
    unprivileged `cgpop` role: every connection made with it uses that schema alone."""
    import psycopg

    name = f"t{next(_schemas)}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}".encode())
    # libpq's `options` sets search_path for every connection of the pool.
    return f"{server.dsn}?options=-csearch_path%3D{name}"


def drop_schema(server: PgServer, dsn: str) -> None:
    import psycopg

    name = dsn.rpartition("%3D")[2]
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {name} CASCADE".encode())


@pytest.fixture
def pg_dsn(postgres: PgServer) -> Iterator[str]:
    """A DSN onto an empty schema of its own, dropped afterwards."""
    dsn = new_schema_dsn(postgres)
    yield dsn
    drop_schema(postgres, dsn)
