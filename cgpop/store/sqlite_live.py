"""Live POP sessions and telemetry flags in the SQLite backend (issue 12, section 3; schema
migration 10): api.LiveSessions.

A row's `owner` is the serving process as "pid:start time" (the start time from
/proc/PID/stat, so a later process that got the same pid is not taken for it). Rows of owners
that are gone are removed by `prune_sessions`, which the server calls at start and at each
housekeeping sweep.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cgpop.store.api import LiveSession
from cgpop.store.sqlite_base import SqliteDatabase

_COLUMNS = "id, node, peer, login, account, mailbox, state, since, sent_bytes, tls"


def process_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot, /proc/PID/stat field 22), or
    None when there is no such process. Where /proc is missing, "-" for a live pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        if not os.path.isdir("/proc/self"):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return None
            except PermissionError:
                return "-"
            return "-"
        return None
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else "-"


def owner_alive(owner: str) -> bool:
    pid, _, start = owner.partition(":")
    try:
        found = process_start(int(pid))
    except ValueError:
        return False
    return found is not None and found == start


class SqliteLive(SqliteDatabase):
    _owner_of: tuple[int, str] | None = None

    def _owner(self) -> str:
        """This process as "pid:start time"; computed again after a fork (workers)."""
        pid = os.getpid()
        cached = self._owner_of
        if cached is None or cached[0] != pid:
            cached = (pid, f"{pid}:{process_start(pid) or '-'}")
            self._owner_of = cached
        return cached[1]

    def record_sessions(
        self,
        opened: Sequence[LiveSession],
        progress: Sequence[tuple[str, str, int]],
        closed: Sequence[str],
    ) -> None:
        owner = self._owner()
        # The registry is advisory and rebuilt by the living processes: its commits need not
        # wait for fsync (WAL with synchronous=NORMAL stays consistent after a crash; the next
        # durable commit on this connection syncs these frames too).
        self._conn().execute("PRAGMA synchronous=NORMAL")
        try:
            self._record(owner, opened, progress, closed)
        finally:
            self._conn().execute("PRAGMA synchronous=FULL")

    def _record(
        self,
        owner: str,
        opened: Sequence[LiveSession],
        progress: Sequence[tuple[str, str, int]],
        closed: Sequence[str],
    ) -> None:
        with self._tx() as conn:
            conn.executemany(
                f"INSERT OR REPLACE INTO live_sessions(owner, {_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(owner, *s.row()) for s in opened],
            )
            conn.executemany(
                "UPDATE live_sessions SET state = ?, sent_bytes = ? WHERE id = ?",
                [(state, sent, sid) for sid, state, sent in progress],
            )
            conn.executemany("DELETE FROM live_sessions WHERE id = ?", [(i,) for i in closed])

    def list_sessions(self) -> list[LiveSession]:
        rows = (
            self._conn()
            .execute(f"SELECT owner, {_COLUMNS} FROM live_sessions ORDER BY since, id")
            .fetchall()
        )
        alive: dict[str, bool] = {}
        found = []
        for r in rows:
            owner = str(r[0])
            if owner not in alive:
                alive[owner] = owner_alive(owner)
            if alive[owner]:
                found.append(LiveSession.from_row(r[1:]))
        return found

    def request_kill(self, session_id: str) -> bool:
        if not any(s.id == session_id for s in self.list_sessions()):
            return False
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE live_sessions SET kill_requested = 1 WHERE id = ?", (session_id,)
            )
            return cur.rowcount > 0

    def kill_requests(self) -> list[str]:
        rows = self._conn().execute(
            "SELECT id FROM live_sessions WHERE owner = ? AND kill_requested = 1",
            (self._owner(),),
        )
        return [str(r[0]) for r in rows]

    def prune_sessions(self) -> int:
        owners = [
            str(r[0])
            for r in self._conn().execute("SELECT DISTINCT owner FROM live_sessions").fetchall()
        ]
        dead = [(o,) for o in owners if not owner_alive(o)]
        if not dead:
            return 0
        with self._tx() as conn:
            before = conn.total_changes
            conn.executemany("DELETE FROM live_sessions WHERE owner = ?", dead)
            return conn.total_changes - before

    def set_telemetry(self, account: str, on: bool) -> bool:
        with self._tx() as conn:
            if on:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO telemetry(account) VALUES (?)", (account.lower(),)
                )
            else:
                cur = conn.execute("DELETE FROM telemetry WHERE account = ?", (account.lower(),))
            if cur.rowcount <= 0:
                return False
            conn.execute("UPDATE telemetry_version SET v = v + 1")
            return True

    def telemetry_accounts(self) -> list[str]:
        rows = self._conn().execute("SELECT account FROM telemetry ORDER BY account")
        return [str(r[0]) for r in rows]

    def telemetry_version(self) -> int:
        row = self._conn().execute("SELECT v FROM telemetry_version").fetchone()
        return 0 if row is None else int(row[0])
