"""The PostgreSQL store (issue 11): any number of gateway nodes on one database.

Methods block; the asyncio layer runs them on worker threads, each call borrowing a connection
from a psycopg_pool pool of `pool_size`. Connections are in autocommit mode: a read is one
statement and one round trip, a write that needs several statements opens a transaction.
Every body lives in the database (inline when small, else in chunks streamed a chunk at a
time), so nothing a second node needs is node-local.

Snapshots across nodes: a POP session registers itself (node, process instance, the oldest
running transaction) in a transaction of its own *before* it reads its maildrop. An expunge
stamps each copy with its transaction id. The collector removes a copy only when its expunge
is older than every live session's registration horizon, i.e. when every snapshot that
exists already saw it gone. A process that opened sessions beats a heartbeat; one silent for
longer than `node_timeout` is dead, its sessions no longer hold anything.

Database time is used for every time stored, so nodes with skewed clocks agree. Backend errors
(server gone, pool exhausted, serialization failures that survive the retries) become
`Unavailable` at this boundary: LMTP 451, `deliver` exit 75, POP -ERR [SYS/TEMP].
"""

from __future__ import annotations

from array import array
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pgerrors

from cgpop.config import Config
from cgpop.spool import Octets, SpooledMessage, StreamStuffer, to_bytes
from cgpop.store.api import (
    ALERT_SCOPES,
    SEEN,
    Alert,
    BodyReader,
    Copy,
    Mailbox,
    MessageInfo,
    NotFound,
    OpenedSession,
    Snapshot,
    Stored,
    StoredMessage,
    StoreError,
    flag_names,
)
from cgpop.store.importing import RealTo, import_batches
from cgpop.store.pg_base import NOW, POOL_WAIT, XID, XMIN, Conn
from cgpop.store.pg_copy import PgCopy
from cgpop.store.pg_live import PgLive
from cgpop.store.pg_queue import PgQueue
from cgpop.store.pg_quota import PgQuotas
from cgpop.store.quota_rules import Root, merge
from cgpop.store.sql_alerts import PENDING_ALERT, SqlAlerts, alert_of, pending_args
from cgpop.store.sql_directory import SqlDirectory
from cgpop.wire import dot_stuff, normalize_crlf

# Bodies up to this size stay in the body row (one row read per RETR, and PostgreSQL's TOAST
# keeps them out of the row's page anyway); larger ones are split into chunks of CHUNK_SIZE,
# so a RETR of a 50 MiB message holds one chunk in memory at a time on both ends.
INLINE_MAX = 128 * 1024
CHUNK_SIZE = 256 * 1024
# The account whose new mailboxes start with DEFAULT_PUBLIC_ACL (CommuniGate/Cyrus "public").
PUBLIC_ACCOUNT = "public"
# pg_try_advisory_xact_lock key of the collector ("cgpopCOL"): one node collects at a time.
_COLLECT_LOCK = 0x6367706F70434F4C


class PostgresStore(PgQueue, PgCopy, PgLive, PgQuotas, SqlDirectory, SqlAlerts):
    def __init__(
        self,
        dsn: str,
        *,
        node: str | None = None,
        pool_size: int = 10,
        node_timeout: float = 30.0,
        duplicate_window: float | None = None,
        connect_timeout: float = POOL_WAIT,
    ) -> None:
        super().__init__(
            dsn,
            node=node,
            pool_size=pool_size,
            node_timeout=node_timeout,
            connect_timeout=connect_timeout,
        )
        self.duplicate_window = duplicate_window
        # Snapshots handed out and not closed yet: id(snapshot) -> (snapshot, registry id).
        # The snapshot is kept so its id() cannot be reused while it is registered.
        self._sessions: dict[int, tuple[Snapshot, int]] = {}

    @classmethod
    def from_config(cls, cfg: Config) -> PostgresStore:
        """The store `[store] backend = "postgresql"` names: what the backend factory calls."""
        d = cfg.delivery
        return cls(
            cfg.store.dsn,
            node=cfg.store.node_name(),
            pool_size=cfg.store.pool_size,
            node_timeout=cfg.store.node_timeout,
            duplicate_window=d.duplicate_window if d.duplicate_suppression else None,
        )

    # --- the directory's hooks (cgpop/store/sql_directory.py) ---
    def _next_uidvalidity(self, conn: Conn) -> int:
        row = conn.execute(
            f"UPDATE uidvalidity SET v = greatest(v + 1, {NOW}::bigint) RETURNING v"
        ).fetchone()
        assert row is not None
        return int(row[0])

    def _drop_mailbox(self, conn: Conn, mailbox_id: int) -> None:
        # Copies are expunged, not deleted: open sessions may still read them.
        self._quota_lock_box(conn, mailbox_id)
        gone = conn.execute(
            f"UPDATE messages SET expunged_at = {NOW}, expunged_xid = {XID} "
            "WHERE mailbox_id = %s AND expunged_xid IS NULL RETURNING size",
            (mailbox_id,),
        ).fetchall()
        self._quota_move(conn, mailbox_id, -sum(int(r[0]) for r in gone), -len(gone))
        conn.execute("DELETE FROM mailboxes WHERE id = %s", (mailbox_id,))

    def list_messages(self, mailbox: Mailbox) -> list[MessageInfo]:
        # The names after the first come along as an array (message_individuals).
        rows = self._all(
            "SELECT m.uid, m.size, m.flags, m.x_real_to, m.internal_date, m.individual, "
            '(SELECT coalesce(array_agg(x.individual ORDER BY x.individual COLLATE "C"), '
            "'{}') FROM message_individuals x "
            "WHERE x.mailbox_id = m.mailbox_id AND x.uid = m.uid) "
            "FROM messages m WHERE m.mailbox_id = %s AND m.expunged_xid IS NULL ORDER BY m.uid",
            (mailbox.id,),
        )
        return [
            MessageInfo(
                int(uid),
                f"{mailbox.uidvalidity:x}.{uid}",
                int(size),
                tuple(flag_names(int(flags))),
                x_real_to,
                float(when),
                (str(individual), *more) if individual is not None else (),
            )
            for uid, size, flags, x_real_to, when, individual, more in rows
        ]

    # --- delivery ---
    def deliver(
        self, message: Octets, copies: Sequence[Copy], warn_percent: int | None = None
    ) -> list[Stored]:
        return self.deliver_many([(message, copies)], warn_percent)[0]

    def deliver_many(
        self, items: Sequence[tuple[Octets, Sequence[Copy]]], warn_percent: int | None = None
    ) -> list[list[Stored]]:
        """Several deliveries in one transaction (group commit), durable when it returns
        (synchronous commit). Per item and copy: stored, or False when suppressed as a
        duplicate, also when the first copy went through another node. All or nothing. A
        large spooled message is streamed into its chunks, never whole in memory."""
        prepared = [
            (_prepare(message) if copies else _Body(0, b""), copies) for message, copies in items
        ]
        return self._retrying(lambda: self._deliver_once(prepared, warn_percent))

    def _deliver_once(
        self, prepared: Sequence[tuple[_Body, Sequence[Copy]]], warn_percent: int | None
    ) -> list[list[Stored]]:
        with self._tx() as conn:
            every = [c for _, copies in prepared for c in copies]
            # Quota rows first: the lock order of every transaction (cgpop/store/pg_quota.py).
            roots = self._quota_lock(conn, [c.mailbox_id for c in every]) if every else {}
            fresh = self._claim_duplicates(conn, every)
            outcome: list[list[Stored]] = []
            keep: list[tuple[_Body, Sequence[Copy], int]] = []
            for body, copies in prepared:
                stored = self._admit(conn, roots, body, copies, fresh, warn_percent)
                outcome.append(stored)
                kept = [c for c, ok in zip(copies, stored, strict=True) if ok]
                if kept:
                    keep.append((body, kept, 0))
            if keep:
                self._store_bodies(conn, keep)
        return outcome

    def _admit(
        self,
        conn: Conn,
        roots: dict[int, tuple[Root, Root | None]],
        body: _Body,
        copies: Sequence[Copy],
        fresh: dict[int, bool],
        warn_percent: int | None,
    ) -> list[Stored]:
        """Per copy: the duplicate verdict, then the quota verdict for the fresh ones (which
        moves usage). A copy refused for quota gives its duplicate record back, so the MTA's
        retry is not suppressed as a duplicate of a copy that was never stored."""
        stored = [fresh.get(id(c), True) for c in copies]
        wanted = [
            (c.mailbox_id, body.size + len(_stored_prefix(c))) if ok else None
            for c, ok in zip(copies, stored, strict=True)
        ]
        refused = self._quota_admit(conn, roots, wanted, warn_percent)
        for c, r in zip(copies, refused, strict=True):
            if r is not None and fresh.get(id(c)):
                conn.execute(
                    "DELETE FROM duplicates WHERE message_id = %s AND rcpt = %s",
                    (c.message_id, c.dedup_key),
                )
        return merge(stored, refused)

    def _claim_duplicates(self, conn: Conn, copies: Sequence[Copy]) -> dict[int, bool]:
        """Cyrus-style duplicate suppression: {id(copy): False} for copies whose Message-ID
        already reached their recipient within the window (on any node). The claim is one
        INSERT .. ON CONFLICT: a concurrent claim of the same key on another node waits for
        that transaction and then sees its row."""
        if self.duplicate_window is None:
            return {}
        first: dict[tuple[str, str], int] = {}
        verdict: dict[int, bool] = {}
        for c in copies:
            if not c.message_id or not c.dedup_key:
                continue
            key = (c.message_id, c.dedup_key)
            if key in first:
                verdict[id(c)] = False  # the same message twice in one batch
            else:
                first[key] = id(c)
        if not first:
            return verdict
        keys = sorted(first)  # one lock order for every transaction: no deadlock among claims
        rows = conn.execute(
            "INSERT INTO duplicates AS d (message_id, rcpt, seen_at) "
            f"SELECT k.m, k.r, {NOW} FROM unnest(%s::text[], %s::text[]) AS k(m, r) "
            "ORDER BY k.m, k.r "
            "ON CONFLICT (message_id, rcpt) DO UPDATE SET seen_at = excluded.seen_at "
            "WHERE d.seen_at <= excluded.seen_at - %s RETURNING d.message_id, d.rcpt",
            ([k[0] for k in keys], [k[1] for k in keys], self.duplicate_window),
        ).fetchall()
        claimed = {(str(m), str(r)) for m, r in rows}
        for key, copy_id in first.items():
            verdict[copy_id] = key in claimed
        return verdict

    def _store_bodies(
        self, conn: Conn, bodies: Sequence[tuple[_Body, Sequence[Copy], int]]
    ) -> None:
        """Insert each body (with its copies and their flag bits) once and its copies, in
        order, UIDs taken from each mailbox's counter."""
        ids_row = conn.execute(
            "SELECT array_agg(nextval(pg_get_serial_sequence('bodies', 'id'))) "
            "FROM generate_series(1, %s)",
            (len(bodies),),
        ).fetchone()
        assert ids_row is not None
        body_ids: list[int] = list(ids_row[0])
        uids = self._allocate_uids(conn, [c.mailbox_id for _, cs, _ in bodies for c in cs])
        body_rows: list[tuple[int, int, bytes | None, int]] = []
        chunk_rows: list[tuple[int, int, bytes]] = []
        message_rows: list[tuple[Any, ...]] = []
        individual_rows: list[tuple[int, str, int]] = []
        for body_id, (body, copies, flags) in zip(body_ids, bodies, strict=True):
            size, stuffed = body.size, body.stuffed
            if body.spooled is not None:
                size = self._stream_body(conn, body_id, body.spooled)
            elif len(stuffed) > INLINE_MAX:
                parts = [stuffed[i : i + CHUNK_SIZE] for i in range(0, len(stuffed), CHUNK_SIZE)]
                body_rows.append((body_id, size, None, len(parts)))
                chunk_rows += [(body_id, seq, part) for seq, part in enumerate(parts)]
            else:
                body_rows.append((body_id, size, stuffed, 0))
            for copy in copies:
                prefix = _stored_prefix(copy)
                uid = uids[copy.mailbox_id].pop(0)
                individual_rows += [(copy.mailbox_id, n, uid) for n in copy.more_individuals]
                message_rows.append(
                    (
                        copy.mailbox_id,
                        uid,
                        body_id,
                        size + len(prefix),
                        flags,
                        copy.x_real_to,
                        copy.individual,
                        prefix,
                    )
                )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO bodies(id, size, data, chunks) VALUES (%s, %s, %s, %s)", body_rows
            )
            if chunk_rows:
                with cur.copy("COPY body_chunks (body_id, seq, data) FROM STDIN") as copy_in:
                    for row in chunk_rows:
                        copy_in.write_row(row)
            cur.executemany(
                "INSERT INTO messages(mailbox_id, uid, body_id, size, flags, internal_date, "
                f"x_real_to, individual, prefix) VALUES (%s, %s, %s, %s, %s, {NOW}, %s, %s, %s)",
                message_rows,
            )
            if individual_rows:
                cur.executemany(
                    "INSERT INTO message_individuals(mailbox_id, individual, uid) "
                    "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    individual_rows,
                )

    def _stream_body(self, conn: Conn, body_id: int, message: SpooledMessage) -> int:
        """A spooled message's body, normalised and stuffed chunk by chunk (StreamStuffer)
        and copied into body_chunks as it goes: memory holds a chunk, never the message.
        Returns the size POP reports."""
        conn.execute(
            "INSERT INTO bodies(id, size, data, chunks) VALUES (%s, 0, NULL, 1)", (body_id,)
        )
        stuffer = StreamStuffer()
        count = 0
        with (
            conn.cursor() as cur,
            cur.copy("COPY body_chunks (body_id, seq, data) FROM STDIN") as copy_in,
        ):
            for part in _rechunk(stuffer, message.chunks()):
                copy_in.write_row((body_id, count, part))
                count += 1
        conn.execute(
            "UPDATE bodies SET size = %s, chunks = %s WHERE id = %s",
            (stuffer.size, count, body_id),
        )
        return stuffer.size

    def _allocate_uids(self, conn: Conn, mailbox_ids: Sequence[int]) -> dict[int, list[int]]:
        """Consecutive new UIDs per mailbox, from its counter row. Rows are locked in id order
        so concurrent group commits on several nodes queue behind each other instead of
        deadlocking; UIDs are never shared or reused."""
        counts: dict[int, int] = {}
        for mid in mailbox_ids:
            counts[mid] = counts.get(mid, 0) + 1
        ids = sorted(counts)
        conn.execute("SELECT 1 FROM mailboxes WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,))
        rows = conn.execute(
            "UPDATE mailboxes m SET next_uid = m.next_uid + c.n "
            "FROM unnest(%s::bigint[], %s::bigint[]) AS c(id, n) WHERE m.id = c.id "
            "RETURNING m.id, m.next_uid - c.n",
            (ids, [counts[i] for i in ids]),
        ).fetchall()
        if len(rows) != len(ids):
            raise NotFound("the mailbox was removed during delivery")
        return {
            int(mid): list(range(int(first), int(first) + counts[int(mid)])) for mid, first in rows
        }

    def import_messages(
        self,
        mailbox: Mailbox,
        messages: Iterable[tuple[bytes, int]],
        batch: int = 500,
        real_to: RealTo | None = None,
    ) -> int:
        """Bulk import (migration from Maildir/mbox): (octets, flag bits) per message, stored
        as-is with no Return-Path/X-Real-To added, in transactions of `batch` messages, in
        order. `real_to(octets)` gives what to record from the message's own X-Real-To field:
        the addresses (joined by REAL_TO_SEPARATOR) and the individual names (issue 13)."""
        count = 0
        for pending in import_batches(mailbox.id, messages, batch, real_to, _prepare):
            with self._tx() as conn:
                self._quota_lock_box(conn, mailbox.id)
                self._store_bodies(conn, [(body, [copy], flags) for body, flags, copy in pending])
                # Counted, never refused: a migration must not stop half way.
                self._quota_move(conn, mailbox.id, sum(b.size for b, _, _ in pending), len(pending))
            count += len(pending)
        return count

    def prune_duplicates(self) -> None:
        if self.duplicate_window is not None:
            with self._conn() as conn:
                conn.execute(
                    f"DELETE FROM duplicates WHERE seen_at < {NOW} - %s",
                    (self.duplicate_window,),
                )

    # --- alerts (CommuniGate): shown once to each account they concern, on any node ---
    def add_alert(self, scope: str, target: str, text: str) -> int:
        """Post an alert (scope in ALERT_SCOPES, text already checked); its id."""
        if scope not in ALERT_SCOPES:
            raise StoreError(f"unknown alert scope {scope!r}")
        row = self._one(
            f"INSERT INTO alerts(scope, target, text, created) VALUES (%s, %s, %s, {NOW}) "
            "RETURNING id",
            (scope, target.lower() if scope != "server" else "", text),
        )
        assert row is not None
        return int(row[0])

    def take_alert(self, account: str) -> Alert | None:
        """`pending_alert`, marked shown in the same statement. Two logins of one account on
        two nodes at once: the delivery row's key makes one of them lose the race; the loser
        takes the next alert, so an alert is shown once in the cluster, never twice, never
        skipped. Each round either wins or sees one more alert delivered, so it ends."""
        while True:
            try:
                row = self._write_row(
                    f"WITH pick AS ({PENDING_ALERT}), taken AS ("
                    "INSERT INTO alerts_delivered(alert_id, account, delivered_at) "
                    f"SELECT id, ?, {NOW} FROM pick ON CONFLICT DO NOTHING RETURNING alert_id) "
                    "SELECT p.id, p.scope, p.target, p.text, p.created, "
                    "EXISTS (SELECT 1 FROM taken) FROM pick p",
                    (*pending_args(account), account.lower()),
                )
            except pgerrors.ForeignKeyViolation:  # the alert was removed meanwhile
                continue
            if row is None:
                return None
            if row[5]:
                return alert_of(row[:5])

    # --- POP sessions ---
    def open_maildrop(self, mailbox: Mailbox, individual: str | None) -> Snapshot:
        return self._open(mailbox, individual, None).snapshot

    def open_session(self, mailbox: Mailbox, individual: str | None, account: str) -> OpenedSession:
        """open_maildrop, other_sessions and pending_alert in the same round trip: the count
        and the alert are read after the registration committed, as if called after it."""
        return self._open(mailbox, individual, account)

    def _open(self, mailbox: Mailbox, individual: str | None, account: str | None) -> OpenedSession:
        instance = self._ensure_instance()
        select: tuple[str, tuple[Any, ...]]
        if individual is None:
            select = (
                "SELECT coalesce(array_agg(uid ORDER BY uid), '{}'), "
                "coalesce(array_agg(size ORDER BY uid), '{}') FROM messages "
                "WHERE mailbox_id = %s AND expunged_xid IS NULL",
                (mailbox.id,),
            )
        else:
            # Two indexed lookups: the first name of each message, then the others
            # (message_individuals). A name is recorded once per message: UNION ALL repeats
            # none.
            select = (
                "SELECT coalesce(array_agg(uid ORDER BY uid), '{}'), "
                "coalesce(array_agg(size ORDER BY uid), '{}') FROM ("
                "SELECT uid, size FROM messages "
                "WHERE mailbox_id = %s AND individual = %s AND expunged_xid IS NULL "
                "UNION ALL SELECT m.uid, m.size FROM message_individuals x "
                "JOIN messages m ON m.mailbox_id = x.mailbox_id AND m.uid = x.uid "
                "WHERE x.mailbox_id = %s AND x.individual = %s AND m.expunged_xid IS NULL) s",
                (mailbox.id, individual.lower(), mailbox.id, individual.lower()),
            )
        after: list[tuple[str, tuple[Any, ...]]] = []
        if account is not None:
            after = [
                (_OTHER_SESSIONS, (mailbox.account_id, instance)),
                (self._DIALECT.sql(f"SELECT EXISTS ({PENDING_ALERT})"), pending_args(account)),
            ]
        try:
            reg_row, rows, extra = self._register_and_read(instance, mailbox.id, select, after)
        except pgerrors.ForeignKeyViolation:
            # This process was declared dead (silent past node_timeout) and its registry row
            # removed: register again, then open.
            self.heartbeat()
            reg_row, rows, extra = self._register_and_read(instance, mailbox.id, select, after)
        assert reg_row is not None
        # One row of two arrays, in binary: far less per-message work than a row each.
        uids = array("q", rows[0][0])
        sizes = array("q", rows[0][1])
        snap = Snapshot(mailbox, uids, sizes, float(reg_row[1]), sum(sizes))
        with self._lock:
            self._sessions[id(snap)] = (snap, int(reg_row[0]))
        others = int(extra[0][0]) if extra and extra[0] else 0
        pending = bool(extra[1][0]) if len(extra) > 1 and extra[1] else False
        return OpenedSession(snap, others, pending)

    def _register_and_read(
        self,
        instance: int,
        mailbox_id: int,
        select: tuple[str, tuple[Any, ...]],
        after: Sequence[tuple[str, tuple[Any, ...]]] = (),
    ) -> tuple[tuple[Any, ...] | None, list[tuple[Any, ...]], list[tuple[Any, ...] | None]]:
        """Register the session, then read the maildrop and the `after` statements' first
        rows, in one pipeline."""
        with self._conn() as conn:
            try:
                # One round trip: the registration commits *before* the maildrop is read, so
                # a collector on any node either sees the session or ran before its snapshot.
                with conn.pipeline():
                    conn.execute("BEGIN")
                    reg = conn.execute(
                        "INSERT INTO store_sessions(instance_id, mailbox_id, snap_xmin, "
                        f"opened_at) VALUES (%s, %s, {XMIN}, {NOW}) RETURNING id, opened_at",
                        (instance, mailbox_id),
                    )
                    conn.execute("COMMIT")
                    cur = conn.execute(*select, binary=True)
                    more = [conn.execute(*stmt) for stmt in after]
                return reg.fetchone(), cur.fetchall(), [c.fetchone() for c in more]
            except psycopg.Error:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
                raise

    def read_message(self, snapshot: Snapshot, index: int) -> StoredMessage:
        found = self.read_messages(snapshot, [index]).get(index)
        if found is None:
            raise NotFound("message no longer exists")
        return found

    def read_messages(self, snapshot: Snapshot, indexes: Sequence[int]) -> dict[int, StoredMessage]:
        """read_message for several messages in one query; large bodies come back as readers
        that fetch their chunks when sent."""
        uids = {snapshot.uids[i]: i for i in indexes}
        rows = self._all(
            "SELECT m.uid, m.prefix, b.data, b.chunks, m.size, b.id FROM messages m "
            "JOIN bodies b ON b.id = m.body_id WHERE m.mailbox_id = %s AND m.uid = ANY(%s)",
            (snapshot.mailbox.id, list(uids)),
        )
        found: dict[int, StoredMessage] = {}
        for uid, prefix, data, nchunks, size, body_id in rows:
            if data is not None:
                found[uids[uid]] = StoredMessage(bytes(prefix), bytes(data), None, int(size))
            else:
                reader = self._body_reader(int(body_id), int(nchunks))
                found[uids[uid]] = StoredMessage(bytes(prefix), None, reader, int(size))
        return found

    def _body_reader(self, body_id: int, nchunks: int) -> BodyReader:
        """Reads the body a chunk per query, each on a pooled connection borrowed for that
        query only: a slow client holds no connection, and memory holds one chunk."""

        def read(chunk_size: int) -> Generator[bytes, None, None]:
            for seq in range(nchunks):
                row = self._one(
                    "SELECT data FROM body_chunks WHERE body_id = %s AND seq = %s",
                    (body_id, seq),
                )
                if row is None:
                    raise NotFound("message no longer exists")
                data = bytes(row[0])
                for i in range(0, len(data), chunk_size):
                    yield data[i : i + chunk_size]

        return read

    def mark_seen(self, items: Sequence[tuple[int, int]]) -> None:
        """Set \\Seen on (mailbox_id, uid) pairs, many sessions' RETRs in one statement.
        \\Seen is advisory state: it commits without waiting for the WAL flush
        (synchronous_commit off: a crash may lose the last flag changes, never corrupt)."""
        if not items:
            return
        pairs = sorted(set(items))

        def once() -> None:
            with self._conn() as conn, conn.pipeline(), conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = off")
                conn.execute(
                    f"UPDATE messages m SET flags = m.flags | {SEEN} "
                    "FROM unnest(%s::bigint[], %s::bigint[]) AS s(mb, uid) "
                    "WHERE m.mailbox_id = s.mb AND m.uid = s.uid",
                    ([p[0] for p in pairs], [p[1] for p in pairs]),
                )

        self._retrying(once)

    def expunge(self, mailbox_id: int, uids: Sequence[int]) -> int:
        with self._tx() as conn:
            # Usage drops here, with the expunge the user sees (issue 12), not later when
            # the collector removes the rows; the quota row is locked first (lock order).
            self._quota_lock_box(conn, mailbox_id)
            gone = conn.execute(
                f"UPDATE messages SET expunged_at = {NOW}, expunged_xid = {XID} "
                "WHERE mailbox_id = %s AND expunged_xid IS NULL AND uid = ANY(%s) "
                "RETURNING size",
                (mailbox_id, list(uids)),
            ).fetchall()
            self._quota_move(conn, mailbox_id, -sum(int(r[0]) for r in gone), -len(gone))
            return len(gone)

    def close_maildrop(self, snapshot: Snapshot) -> None:
        """Never waits: the registry row is removed by the registry thread (pg_base)."""
        with self._lock:
            entry = self._sessions.pop(id(snapshot), None)
        if entry is not None:
            self.release_session(entry[1])

    def other_sessions(self, snapshot: Snapshot) -> int:
        """Sessions of other store instances (nodes, processes) on mailboxes of the owner of
        `snapshot`, from the registry (live sessions only: a small table): one count, no lock."""
        row = self._one(_OTHER_SESSIONS, (snapshot.mailbox.account_id, self._instance))
        return 0 if row is None else int(row[0])

    def live_sessions(self) -> list[tuple[int, str, int, float]]:
        """(session id, node, mailbox id, opened at) of every live session on every node."""
        rows = self._all(
            "SELECT s.id, i.node, s.mailbox_id, s.opened_at FROM store_sessions s "
            "JOIN store_instances i ON i.id = s.instance_id "
            "WHERE i.heartbeat >= now() - i.timeout * interval '1 second' ORDER BY s.id"
        )
        return [(int(a), str(b), int(c), float(d)) for a, b, c, d in rows]

    # --- the collector (the safety mechanism) ---
    def collect(self) -> int:
        """Remove expunged copies no live session on any node can still see, then the bodies
        no copy names any more, and release dead nodes' sessions. One node collects at a time
        (an advisory lock; the others skip). Returns how many bodies went."""
        self.flush_released()
        with self._tx() as conn:
            got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_COLLECT_LOCK,))
            row = got.fetchone()
            if row is None or not row[0]:
                return 0
            conn.execute(
                "DELETE FROM store_instances "
                "WHERE heartbeat < now() - timeout * interval '1 second'"
            )
            # One statement, one snapshot: the horizon and the rows it judges are read
            # together. A session registering after this snapshot reads its maildrop later
            # still, and so already sees every expunge this statement can see.
            gone = conn.execute(
                "DELETE FROM messages WHERE expunged_xid IS NOT NULL AND expunged_xid < ("
                "SELECT coalesce(min(snap_xmin), 9223372036854775807) FROM store_sessions) "
                "RETURNING body_id"
            ).fetchall()
            body_ids = sorted({int(r[0]) for r in gone})
            if not body_ids:
                return 0
            removed = conn.execute(
                "DELETE FROM bodies b WHERE b.id = ANY(%s) "
                "AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.body_id = b.id)",
                (body_ids,),
            )
            return removed.rowcount

    def remove_orphan_files(self) -> int:
        """Bodies live in the database's transactions: a crash leaves nothing half-written."""
        return 0


# other_sessions: the account's live sessions registered by other store instances.
_OTHER_SESSIONS = (
    "SELECT count(*) FROM store_sessions s "
    "JOIN store_instances i ON i.id = s.instance_id "
    "JOIN mailboxes m ON m.id = s.mailbox_id "
    "WHERE m.account_id = %s AND s.instance_id IS DISTINCT FROM %s "
    "AND i.heartbeat >= now() - i.timeout * interval '1 second'"
)


@dataclass(frozen=True, slots=True)
class _Body:
    """A message ready to store: CRLF-normalised, dot-stuffed octets and the size POP reports;
    or, for a large spooled message, the spool (stuffed and measured while it is copied)."""

    size: int
    stuffed: bytes
    spooled: SpooledMessage | None = None


def _stored_prefix(copy: Copy) -> bytes:
    """A copy's header lines as stored (their octets count in its size, as POP reports it)."""
    return dot_stuff(normalize_crlf(copy.prefix)) if copy.prefix else b""


def _measured(message: SpooledMessage) -> int:
    """The size POP will report for a spooled message, known before its transaction (the
    quota check needs it): one read of the spool, nothing held."""
    stuffer = StreamStuffer()
    for chunk in message.chunks():
        stuffer.feed(chunk)
    stuffer.finish()
    return stuffer.size


def _prepare(raw: Octets) -> _Body:
    if isinstance(raw, SpooledMessage):
        if raw.size > INLINE_MAX:
            return _Body(_measured(raw), b"", raw)
        raw = to_bytes(raw)
    normalized = normalize_crlf(raw)
    return _Body(len(normalized), dot_stuff(normalized))


def _rechunk(stuffer: StreamStuffer, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The stuffed octets of `chunks` in pieces of exactly CHUNK_SIZE (the last shorter)."""
    buf = bytearray()
    for chunk in chunks:
        buf += stuffer.feed(chunk)
        while len(buf) >= CHUNK_SIZE:
            yield bytes(buf[:CHUNK_SIZE])
            del buf[:CHUNK_SIZE]
    buf += stuffer.finish()
    while buf:
        yield bytes(buf[:CHUNK_SIZE])
        del buf[:CHUNK_SIZE]
