"""Live POP sessions and telemetry flags in the PostgreSQL backend (issue 12, section 3):
api.LiveSessions.

A row belongs to this process's entry in `store_instances` (pg_base.py): it is listed only
while that entry's heartbeat is younger than its node_timeout, and goes with the entry when
the collector removes a dead node (ON DELETE CASCADE), so a node killed with -9 leaves no
session behind. `cgpop sessions kill` sets `kill_requested`; the owning node polls for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import psycopg

from cgpop.store.api import LiveSession
from cgpop.store.pg_base import Conn, PgDatabase

_COLUMNS = (
    "l.id, l.node, l.peer, l.login, l.account, l.mailbox, l.state, l.since, l.sent_bytes, l.tls"
)
_LIVE = "i.heartbeat >= now() - i.timeout * interval '1 second'"


class PgLive(PgDatabase):
    @contextlib.contextmanager
    def _one_trip(self) -> Iterator[Conn]:
        """A transaction sent as one pipeline, BEGIN to COMMIT: one round trip (issue 11).
        psycopg's transaction() in a pipeline syncs at its start and at its end: three."""
        with self._conn() as conn:
            try:
                with conn.pipeline():
                    conn.execute("BEGIN")
                    yield conn
                    conn.execute("COMMIT")
            except BaseException:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
                raise

    def record_sessions(
        self,
        opened: Sequence[LiveSession],
        progress: Sequence[tuple[str, str, int]],
        closed: Sequence[str],
    ) -> None:
        instance = self._ensure_instance()
        with self._one_trip() as conn, conn.cursor() as cur:
            # Advisory rows, rebuilt by the living nodes: no wait for the WAL flush.
            cur.execute("SET LOCAL synchronous_commit = off")
            if opened:
                cur.executemany(
                    "INSERT INTO live_sessions(instance_id, id, node, peer, login, account, "
                    "mailbox, state, since, sent_bytes, tls) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (id) DO NOTHING",
                    [(instance, *s.row()) for s in opened],
                )
            if progress:
                cur.execute(
                    "UPDATE live_sessions l SET state = p.state, sent_bytes = p.sent "
                    "FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS p(id, state, sent) "
                    "WHERE l.id = p.id",
                    (
                        [p[0] for p in progress],
                        [p[1] for p in progress],
                        [p[2] for p in progress],
                    ),
                )
            if closed:
                cur.execute("DELETE FROM live_sessions WHERE id = ANY(%s)", (list(closed),))

    def list_sessions(self) -> list[LiveSession]:
        rows = self._all(
            f"SELECT {_COLUMNS} FROM live_sessions l "
            f"JOIN store_instances i ON i.id = l.instance_id WHERE {_LIVE} "
            "ORDER BY l.since, l.id"
        )
        return [LiveSession.from_row(r) for r in rows]

    def request_kill(self, session_id: str) -> bool:
        row = self._one(
            "UPDATE live_sessions l SET kill_requested = true FROM store_instances i "
            f"WHERE l.id = %s AND i.id = l.instance_id AND {_LIVE} RETURNING 1",
            (session_id,),
        )
        return row is not None

    def kill_requests(self) -> list[str]:
        instance = self._instance
        if instance is None:
            return []
        rows = self._all(
            "SELECT id FROM live_sessions WHERE instance_id = %s AND kill_requested",
            (instance,),
        )
        return [str(r[0]) for r in rows]

    def prune_sessions(self) -> int:
        """Rows of nodes silent past their node_timeout (the collector then removes the
        node's entry, and with it what is left)."""
        with self._conn() as conn:
            cur = conn.execute(
                "DELETE FROM live_sessions l USING store_instances i "
                f"WHERE i.id = l.instance_id AND NOT ({_LIVE})"
            )
            return cur.rowcount

    def set_telemetry(self, account: str, on: bool) -> bool:
        with self._tx() as conn:
            if on:
                cur = conn.execute(
                    "INSERT INTO telemetry(account) VALUES (%s) ON CONFLICT DO NOTHING",
                    (account.lower(),),
                )
            else:
                cur = conn.execute("DELETE FROM telemetry WHERE account = %s", (account.lower(),))
            if cur.rowcount <= 0:
                return False
            conn.execute("UPDATE telemetry_version SET v = v + 1")
            return True

    def telemetry_accounts(self) -> list[str]:
        return [str(r[0]) for r in self._all("SELECT account FROM telemetry ORDER BY account")]

    def telemetry_version(self) -> int:
        row = self._one("SELECT v FROM telemetry_version")
        return 0 if row is None else int(row[0])
