"""The PostgreSQL backend's database access (issue 11): the connection pool, transactions and
their retries, the schema upgrade at open, backend errors turned into the store's own, and this
process's entry in the live-session registry with its heartbeat.

Connections are in autocommit mode: a read is one statement and one round trip; a write that
needs several statements opens a transaction. Backend errors (server gone, pool exhausted,
serialization failures that survive the retries) become `Unavailable` at this boundary:
LMTP 451, `deliver` exit 75, POP -ERR [SYS/TEMP].
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg_pool import ConnectionPool, PoolTimeout

from cgpop.store import pg_schema
from cgpop.store.api import NotFound, TemporaryFailure, Unavailable

log = logging.getLogger("cgpop.store.postgres")

# How long a call waits for a pooled connection before it fails with TemporaryFailure: long
# enough to ride out a burst (every worker thread busy), short enough that a client gets its
# -ERR [SYS/TEMP] or 451 well within its own timeouts while the database is unreachable.
POOL_WAIT = 10.0
# While the database is known to be unreachable (connections to it fail), a call waits this
# long instead, then fails: with the database down, waiting POOL_WAIT would hold a worker thread
# per call, and clients queued behind the threads would wait minutes for their -ERR [SYS/TEMP]
# or 451 (docs/cluster.md, "What happens when the database is down").
DOWN_WAIT = 1.0
# The pool's background reconnection backs off (1, 2, 4 s...) and gives up after this long; the
# next call then starts a new attempt at once. Short, so the pool finds a database that came
# back within about a second, not after a backoff grown over a long outage (psycopg_pool's
# default gives up after 5 minutes, waiting minutes between attempts by then).
RECONNECT_WINDOW = 2.0
# libpq's connect_timeout (seconds) unless the DSN sets one: a connection attempt to a host
# that does not answer (a network cut, not a refused port) ends, and the pool tries again.
CONNECT_TIMEOUT = 5
# Deadlocks and serialization failures are retried this often before they become
# TemporaryFailure (concurrent group commits from several nodes can collide on a UID row).
_TX_RETRIES = 5

# SQL fragments: this transaction's id, the oldest transaction still running (the horizon of
# a snapshot taken now), and the database's clock in Unix seconds.
XID = "pg_current_xact_id()::text::bigint"
XMIN = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
NOW = "extract(epoch from now())"
T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]


class PgDatabase:
    """A pool of connections to one database, migrated at open, for one node's process."""

    def __init__(
        self,
        dsn: str,
        *,
        node: str | None = None,
        pool_size: int = 10,
        node_timeout: float = 30.0,
        connect_timeout: float = POOL_WAIT,
    ) -> None:
        self.node = node or socket.gethostname()
        self.node_timeout = node_timeout
        self._pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            kwargs=_connect_kwargs(dsn),
            timeout=POOL_WAIT,
            reconnect_timeout=RECONNECT_WINDOW,
            open=False,
            name=f"cgpop-{self.node}",
        )
        # Connections to the database failed since the last call that got one (the
        # database is down): calls wait DOWN_WAIT for a connection, not POOL_WAIT.
        self._down = False
        self._connect_errors = 0
        self._lock = threading.Lock()
        self._instance: int | None = None
        # The registry thread: beats, and writes closed sessions (close_maildrop runs on the
        # event loop and must not wait for the database).
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._released: list[int] = []
        # Held while released rows are written: a flush that finds the list empty has still
        # waited for one in progress, so collect() sees every session closed before it.
        self._flush_lock = threading.Lock()
        self._beat_thread: threading.Thread | None = None
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as exc:
            self._pool.close()
            raise Unavailable(f"database unreachable: {exc}") from exc
        try:
            with self._conn() as conn:
                pg_schema.migrate(conn)
        except BaseException:
            self._pool.close()
            raise

    # --- connections ---
    @contextlib.contextmanager
    def _conn(self) -> Iterator[Conn]:
        try:
            with self._pool.connection(DOWN_WAIT if self._down else POOL_WAIT) as conn:
                if self._down:
                    self._down = False
                    self._connect_errors = self._pool.get_stats().get("connections_errors", 0)
                yield conn
        except psycopg.OperationalError as exc:  # PoolTimeout is one too
            if isinstance(exc, PoolTimeout):
                # Every connection busy (a burst), or none to be had (the database is down).
                self._down = self._connections_fail()
            elif not isinstance(exc, pgerrors.TransactionRollback):
                # A lost connection (database restarted, failed over): the pool's other idle
                # connections are most likely lost too. Test and replace them now, so one
                # call fails, not one per pooled connection.
                self._down = True
                with contextlib.suppress(psycopg.Error):
                    self._pool.check()
            raise Unavailable(f"database unavailable: {exc}") from exc

    def _connections_fail(self) -> bool:
        """Have the pool's attempts to connect failed since a call last got a connection?"""
        errors = self._pool.get_stats().get("connections_errors", 0)
        failing = errors > self._connect_errors
        self._connect_errors = errors
        return failing or self._down

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Conn]:
        with self._conn() as conn, conn.transaction():
            yield conn

    def _retrying(self, fn: Callable[[], T]) -> T:
        """Run a transaction again after a deadlock or serialization failure."""
        for attempt in range(_TX_RETRIES):
            try:
                return fn()
            except TemporaryFailure as exc:
                if not isinstance(exc.__cause__, pgerrors.TransactionRollback):
                    raise
                if attempt == _TX_RETRIES - 1:
                    raise
                log.info("retrying after %s", type(exc.__cause__).__name__)
        raise AssertionError("unreachable")

    def _domain_id(self, conn: Conn, name: str) -> int:
        row = conn.execute("SELECT id FROM domains WHERE name = %s", (name.lower(),)).fetchone()
        if row is None:
            raise NotFound(f"no such domain: {name}")
        return int(row[0])

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._conn() as conn:
            return conn.execute(sql, args).fetchone()

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._conn() as conn:
            return conn.execute(sql, args).fetchall()

    def close(self) -> None:
        """Stop the registry thread, release this process's sessions, close the pool."""
        self._stop_registry()
        if self._instance is not None:
            with contextlib.suppress(TemporaryFailure, psycopg.Error), self._conn() as conn:
                conn.execute("DELETE FROM store_instances WHERE id = %s", (self._instance,))
            self._instance = None
        self._pool.close()

    # --- the live-session registry ---
    def _ensure_instance(self) -> int:
        """Register this process (first POP session only: the CLI never does) and start its
        heartbeat."""
        with self._lock:
            if self._instance is not None:
                return self._instance
            row = self._one(
                "INSERT INTO store_instances(node, started_at, timeout) "
                f"VALUES (%s, {NOW}, %s) RETURNING id",
                (self.node, self.node_timeout),
            )
            assert row is not None
            self._instance = int(row[0])
            self._beat_thread = threading.Thread(
                target=self._registry_worker, name=f"cgpop-registry-{self.node}", daemon=True
            )
            self._beat_thread.start()
            return self._instance

    def _stop_registry(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._beat_thread is not None:
            self._beat_thread.join()
            self._beat_thread = None

    def _registry_worker(self) -> None:
        # Three beats per timeout: one lost beat (a busy database) does not kill the node.
        interval = self.node_timeout / 3
        next_beat = time.monotonic() + interval
        while True:
            self._wake.wait(max(0.0, next_beat - time.monotonic()))
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.flush_released()
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + interval
                    self.heartbeat()
            except (TemporaryFailure, psycopg.Error) as exc:
                log.warning("session registry of node %s: %s", self.node, exc)

    def release_session(self, session_id: int) -> None:
        """A session ended: its registry row goes soon, written by the registry thread. Does
        not wait (the shell calls close_maildrop on its event loop). Until the row goes the
        session still holds what it saw: the delay can only keep things longer."""
        with self._lock:
            self._released.append(session_id)
        self._wake.set()

    def flush_released(self) -> None:
        """Remove the registry rows of ended sessions now (also before collecting)."""
        with self._flush_lock:
            with self._lock:
                ids, self._released = self._released, []
            if not ids:
                return
            try:
                with self._conn() as conn:
                    conn.execute("DELETE FROM store_sessions WHERE id = ANY(%s)", (ids,))
            except BaseException:
                with self._lock:
                    self._released[:0] = ids  # written at the next wake-up
                raise

    def heartbeat(self) -> None:
        """Tell the other nodes this process is alive. If it was declared dead meanwhile (a
        database outage longer than node_timeout), its sessions' holds were released: it
        registers again so new sessions are held, and says so."""
        instance = self._instance
        if instance is None:
            return
        with self._conn() as conn:
            row = conn.execute(
                "UPDATE store_instances SET heartbeat = now() WHERE id = %s RETURNING 1",
                (instance,),
            ).fetchone()
            if row is None:
                log.warning(
                    "node %s was silent longer than node_timeout; its sessions were released",
                    self.node,
                )
                conn.execute(
                    "INSERT INTO store_instances(id, node, started_at, timeout) "
                    f"VALUES (%s, %s, {NOW}, %s) ON CONFLICT DO NOTHING",
                    (instance, self.node, self.node_timeout),
                )


def _connect_kwargs(dsn: str) -> dict[str, Any]:
    """Connection options: autocommit, and CONNECT_TIMEOUT unless the DSN sets its own."""
    kwargs: dict[str, Any] = {"autocommit": True}
    if "connect_timeout" not in psycopg.conninfo.conninfo_to_dict(dsn):
        kwargs["connect_timeout"] = CONNECT_TIMEOUT
    return kwargs
