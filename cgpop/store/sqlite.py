"""The embedded snapshot store: SQLite in WAL mode under the data directory.

Methods are blocking; the asyncio layer runs them in worker threads (one connection per thread).
Durability: deliveries commit with synchronous=FULL after body files are fsynced, so an
acknowledged message survives a crash and a crash before commit leaves nothing visible (an
orphan body file at most, removed at the next start).

Body files and concurrent writers: a writer (the server's LMTP and XTND paths, `cgpop deliver`,
`cgpop mailbox import`, another worker process) writes a large body's file *before* the
transaction that names it commits. Each such file is held open with a shared `flock` from its
creation until that transaction has ended, and the orphan sweep only removes a file it can lock
exclusively and, once locked, still finds unnamed. A writer that dies loses its locks with its
process, so its files become sweepable; a live writer's file never is. No global lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import secrets
import sqlite3
import time
from array import array
from collections import Counter
from collections.abc import Generator, Iterable, Iterator, Sequence
from pathlib import Path

from cgpop.spool import Octets, SpooledMessage, StreamStuffer
from cgpop.store import schema
from cgpop.store.api import (
    SEEN,
    Copy,
    HoldBoard,
    Mailbox,
    MessageInfo,
    NotFound,
    OpenedSession,
    Snapshot,
    Stored,
    StoredMessage,
    flag_names,
)
from cgpop.store.importing import RealTo, import_batches
from cgpop.store.quota_rules import merge
from cgpop.store.sql_directory import SqlDirectory
from cgpop.store.sqlite_alerts import SqliteAlerts
from cgpop.store.sqlite_base import translate_errors
from cgpop.store.sqlite_copy import SqliteCopy
from cgpop.store.sqlite_live import SqliteLive
from cgpop.store.sqlite_queue import SqliteQueue
from cgpop.store.sqlite_quota import SqliteQuotas
from cgpop.wire import dot_stuff, normalize_crlf

# Bodies up to this size are kept inline in the database: one fsync per delivery, no file
# open per RETR. Larger ones go to files and are streamed.
INLINE_MAX = 128 * 1024
# SQLite's default SQLITE_MAX_VARIABLE_NUMBER is 32766 since 3.32; stay far below it.
_CHUNK = 500
# The account whose new mailboxes start with DEFAULT_PUBLIC_ACL (CommuniGate/Cyrus "public").
PUBLIC_ACCOUNT = "public"


def _now() -> float:
    return time.time()


def _stored_prefix(copy: Copy) -> bytes:
    """A copy's header lines as stored (their octets count in its size, as POP reports it)."""
    return dot_stuff(normalize_crlf(copy.prefix)) if copy.prefix else b""


def _file_chunks(path: Path, chunk_size: int) -> Generator[bytes, None, None]:
    """A body kept in a file, in bounded chunks (StoredMessage.reader)."""
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            yield chunk


@translate_errors
class SqliteStore(SqliteQueue, SqliteAlerts, SqliteCopy, SqliteLive, SqliteQuotas, SqlDirectory):
    def __init__(
        self,
        data_dir: Path,
        *,
        duplicate_window: float | None = None,
        holds: HoldBoard | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        super().__init__(self.data_dir / "cgpop.sqlite3")
        self.bodies_dir = self.data_dir / "bodies"
        self.duplicate_window = duplicate_window
        # Open sessions by the time their snapshot was taken: the collector keeps every
        # expunged copy that one of them may still read.
        self._open: Counter[float] = Counter()
        # With `[server] workers`, the other workers' oldest open snapshots (cgpop/shared.py):
        # this process publishes its own there, and the collector honours all of them.
        self._holds = holds
        if holds is not None:
            holds.publish(None)  # a replacement worker: its predecessor's sessions are gone
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.bodies_dir / "tmp").mkdir(parents=True, exist_ok=True)
        schema.migrate(self._conn())

    # --- the directory's hooks (cgpop/store/sql_directory.py) ---
    def _next_uidvalidity(self, conn: sqlite3.Connection) -> int:
        # A persistent counter (schema migration 9), never the clock: it never repeats, even
        # for a mailbox removed and re-created in the same second or after a restart.
        conn.execute("UPDATE uidvalidity_counter SET last = last + 1")
        (uidvalidity,) = conn.execute("SELECT last FROM uidvalidity_counter").fetchone()
        return int(uidvalidity)

    def _drop_mailbox(self, conn: sqlite3.Connection, mailbox_id: int) -> None:
        # Copies are expunged, not deleted: open sessions may still read them.
        gone = conn.execute(
            "UPDATE messages SET expunged_at = ? WHERE mailbox_id = ? AND expunged_at IS NULL "
            "RETURNING size",
            (_now(), mailbox_id),
        ).fetchall()
        self._quota_move(conn, mailbox_id, [-int(r[0]) for r in gone])
        conn.execute("DELETE FROM mailboxes WHERE id = ?", (mailbox_id,))

    def list_messages(self, mailbox: Mailbox) -> list[MessageInfo]:
        conn = self._conn()
        more: dict[int, list[str]] = {}
        for uid, name in conn.execute(
            "SELECT uid, individual FROM message_individuals WHERE mailbox_id = ? "
            "ORDER BY uid, individual",
            (mailbox.id,),
        ):
            more.setdefault(int(uid), []).append(str(name))
        rows = conn.execute(
            "SELECT uid, size, flags, x_real_to, internal_date, individual FROM messages "
            "WHERE mailbox_id = ? AND expunged_at IS NULL ORDER BY uid",
            (mailbox.id,),
        )
        return [
            MessageInfo(
                uid,
                f"{mailbox.uidvalidity:x}.{uid}",
                size,
                tuple(flag_names(flags)),
                x_real_to,
                when,
                (individual, *more.get(uid, ())) if individual is not None else (),
            )
            for uid, size, flags, x_real_to, when, individual in rows
        ]

    # --- delivery ---
    def _write_body_file(self, chunks: Iterable[bytes], pins: list[int]) -> str:
        """Write and fsync a body file from stuffed `chunks`. Its descriptor, holding a shared
        flock, is appended to `pins` and must stay open until the transaction naming the file
        has ended (see the module docstring), then be released with `_release`."""
        while True:
            name = secrets.token_hex(16)
            tmp = self.bodies_dir / "tmp" / name
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            pins.append(fd)
            fcntl.flock(fd, fcntl.LOCK_SH)
            # The sweep may have removed the file between open and flock: start again.
            if os.fstat(fd).st_nlink:
                break
        rel = f"{name[:2]}/{name}"
        final = self.bodies_dir / rel
        final.parent.mkdir(exist_ok=True)
        try:
            with open(fd, "wb", closefd=False) as fh:
                for chunk in chunks:
                    fh.write(chunk)
                fh.flush()
                os.fsync(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dirfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        return rel

    def _write_stuffed_stream(self, message: SpooledMessage, pins: list[int]) -> tuple[str, int]:
        """A spooled message's body file, normalised and stuffed chunk by chunk (never whole
        in memory): its name and the normalised size. Pinned as by `_write_body_file`."""
        stuffer = StreamStuffer()

        def stuffed() -> Iterator[bytes]:
            for chunk in message.chunks():
                yield stuffer.feed(chunk)
            yield stuffer.finish()

        return self._write_body_file(stuffed(), pins), stuffer.size

    @staticmethod
    def _release(pins: list[int]) -> None:
        for fd in pins:
            os.close(fd)
        pins.clear()

    def _stored_body(self, raw: Octets, pins: list[int]) -> tuple[int, bytes, str | None]:
        """(size as POP reports it, stuffed octets, body file or None when kept inline). The
        file, if any, is written and fsynced before the caller's transaction commits, and
        pinned (see `_write_body_file`) until the caller releases `pins` after it."""
        if isinstance(raw, SpooledMessage):
            if raw.size > INLINE_MAX:
                name, size = self._write_stuffed_stream(raw, pins)
                return size, b"", name
            raw = b"".join(raw.chunks())
        normalized = normalize_crlf(raw)
        stuffed = dot_stuff(normalized)
        file = self._write_body_file((stuffed,), pins) if len(stuffed) > INLINE_MAX else None
        return len(normalized), stuffed, file

    def _insert_body(
        self, conn: sqlite3.Connection, size: int, stuffed: bytes, file: str | None, refs: int
    ) -> int:
        cur = conn.execute(
            "INSERT INTO bodies(size, data, file, refs) VALUES (?, ?, ?, ?)",
            (size, None if file else stuffed, file, refs),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _next_uid(self, conn: sqlite3.Connection, mailbox_id: int) -> int:
        row = conn.execute(
            "UPDATE mailboxes SET next_uid = next_uid + 1 WHERE id = ? RETURNING next_uid - 1",
            (mailbox_id,),
        ).fetchone()
        if row is None:
            raise NotFound("the mailbox was removed during delivery")
        return int(row[0])

    def deliver(
        self, message: Octets, copies: Sequence[Copy], warn_percent: int | None = None
    ) -> list[Stored]:
        return self.deliver_many([(message, copies)], warn_percent)[0]

    def deliver_many(
        self, items: Sequence[tuple[Octets, Sequence[Copy]]], warn_percent: int | None = None
    ) -> list[list[Stored]]:
        """Several deliveries in one transaction, so concurrent deliveries share one fsync
        (group commit). Per item and copy: stored, or False when suppressed as a duplicate.
        All or nothing: on an exception no item is stored."""
        prepared: list[tuple[int, bytes, str | None, Sequence[Copy]]] = []
        pins: list[int] = []
        try:
            for message, copies in items:
                if not copies:
                    prepared.append((0, b"", None, copies))
                    continue
                prepared.append((*self._stored_body(message, pins), copies))
            now = _now()
            outcome: list[list[Stored]] = []
            with self._tx() as conn:
                for size, stuffed, file, copies in prepared:
                    stored = self._admit(conn, size, copies, now, warn_percent)
                    outcome.append(stored)
                    keep = [c for c, fresh in zip(copies, stored, strict=True) if fresh]
                    if keep:
                        body_id = self._insert_body(conn, size, stuffed, file, len(keep))
                        for copy in keep:
                            self._insert_copy(conn, copy, body_id, size, now)
        except BaseException:
            self._unlink_files(file for _, _, file, _ in prepared)
            raise
        finally:
            self._release(pins)
        # Bodies every copy of which was a duplicate were never referenced.
        self._unlink_files(
            file
            for (_, _, file, _), stored in zip(prepared, outcome, strict=True)
            if not any(stored)
        )
        return outcome

    def _admit(
        self,
        conn: sqlite3.Connection,
        size: int,
        copies: Sequence[Copy],
        now: float,
        warn_percent: int | None,
    ) -> list[Stored]:
        """Per copy: the duplicate verdict, then the quota verdict for the fresh ones (which
        moves usage). A copy refused for quota gives its duplicate record back, so the MTA's
        retry is not suppressed as a duplicate of a copy that was never stored."""
        fresh = [self._claim_duplicate_slot(conn, c, now) for c in copies]
        refused = self._quota_admit(
            conn,
            [
                (c.mailbox_id, size + len(_stored_prefix(c))) if ok else None
                for c, ok in zip(copies, fresh, strict=True)
            ],
            warn_percent,
        )
        for c, r in zip(copies, refused, strict=True):
            if r is not None and self.duplicate_window is not None and c.message_id:
                conn.execute(
                    "DELETE FROM duplicates WHERE message_id = ? AND rcpt = ?",
                    (c.message_id, c.dedup_key),
                )
        return merge(fresh, refused)

    def _insert_copy(
        self,
        conn: sqlite3.Connection,
        copy: Copy,
        body_id: int,
        size: int,
        now: float,
        flags: int = 0,
    ) -> None:
        prefix = _stored_prefix(copy)
        uid = self._next_uid(conn, copy.mailbox_id)
        conn.execute(
            "INSERT INTO messages(mailbox_id, uid, body_id, size, flags, internal_date, "
            "x_real_to, individual, prefix) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                copy.mailbox_id,
                uid,
                body_id,
                size + len(prefix),
                flags,
                now,
                copy.x_real_to,
                copy.individual,
                prefix,
            ),
        )
        if copy.more_individuals:
            # Schema migration 7: the names after the first (the trigger there needs the
            # first in messages.individual to remove these with the message).
            assert copy.individual is not None
            conn.executemany(
                "INSERT OR IGNORE INTO message_individuals(mailbox_id, individual, uid) "
                "VALUES (?, ?, ?)",
                [(copy.mailbox_id, name, uid) for name in copy.more_individuals],
            )

    def _unlink_files(self, files: Iterable[str | None]) -> None:
        for rel in files:
            if rel is not None:
                with contextlib.suppress(OSError):
                    (self.bodies_dir / rel).unlink()

    def import_messages(
        self,
        mailbox: Mailbox,
        messages: Iterable[tuple[bytes, int]],
        batch: int = 500,
        real_to: RealTo | None = None,
    ) -> int:
        """Bulk import (migration from Maildir/mbox): (octets, flag bits) per message, stored
        as-is with no Return-Path/X-Real-To added, in transactions of `batch` messages.
        `real_to(octets)` gives what to record from the message's own X-Real-To field: the
        addresses (joined by REAL_TO_SEPARATOR) and the individual names (issue 13)."""
        count = 0
        for pending in import_batches(mailbox.id, messages, batch, real_to, bytes):
            pins: list[int] = []
            files: list[str | None] = []
            try:
                with self._tx() as conn:
                    now = _now()
                    for raw, flags, copy in pending:
                        size, stuffed, file = self._stored_body(raw, pins)
                        files.append(file)
                        body_id = self._insert_body(conn, size, stuffed, file, 1)
                        self._insert_copy(conn, copy, body_id, size, now, flags)
                        # Counted, never refused: a migration must not stop half way.
                        self._quota_move(conn, mailbox.id, [size])
            except BaseException:
                self._unlink_files(files)
                raise
            finally:
                self._release(pins)
            count += len(pending)
        return count

    def _claim_duplicate_slot(self, conn: sqlite3.Connection, copy: Copy, now: float) -> bool:
        """Cyrus-style duplicate suppression: False if this Message-ID already reached this
        recipient within the window."""
        if self.duplicate_window is None or not copy.message_id or not copy.dedup_key:
            return True
        row = conn.execute(
            "SELECT seen_at FROM duplicates WHERE message_id = ? AND rcpt = ?",
            (copy.message_id, copy.dedup_key),
        ).fetchone()
        if row is not None and now - row[0] < self.duplicate_window:
            return False
        conn.execute(
            "INSERT OR REPLACE INTO duplicates(message_id, rcpt, seen_at) VALUES (?, ?, ?)",
            (copy.message_id, copy.dedup_key, now),
        )
        return True

    # --- POP sessions ---
    def open_maildrop(self, mailbox: Mailbox, individual: str | None) -> Snapshot:
        # The hold is registered (and published to the other workers) before the snapshot is
        # read, so no collector can judge a copy this snapshot holds by an older horizon.
        opened = _now()
        with self._lock:
            self._open[opened] += 1
            self._publish_hold()
        try:
            conn = self._conn()
            if individual is None:
                rows = conn.execute(
                    "SELECT uid, size FROM messages "
                    "WHERE mailbox_id = ? AND expunged_at IS NULL ORDER BY uid",
                    (mailbox.id,),
                ).fetchall()
            else:
                # Two indexed lookups: the first name of each message, then the others (schema
                # migration 7). A name is recorded once per message, so UNION ALL repeats none.
                rows = conn.execute(
                    "SELECT uid, size FROM messages INDEXED BY messages_individual "
                    "WHERE mailbox_id = ? AND individual = ? AND expunged_at IS NULL "
                    "UNION ALL SELECT m.uid, m.size FROM message_individuals x "
                    "JOIN messages m ON m.mailbox_id = x.mailbox_id AND m.uid = x.uid "
                    "WHERE x.mailbox_id = ? AND x.individual = ? AND m.expunged_at IS NULL "
                    "ORDER BY 1",
                    (mailbox.id, individual.lower(), mailbox.id, individual.lower()),
                ).fetchall()
        except BaseException:
            self._end_hold(opened)
            raise
        uids, sizes = zip(*rows, strict=True) if rows else ((), ())
        size_arr = array("q", sizes)
        return Snapshot(mailbox, array("q", uids), size_arr, opened, sum(size_arr))

    def read_message(self, snapshot: Snapshot, index: int) -> StoredMessage:
        found = self.read_messages(snapshot, [index]).get(index)
        if found is None:
            raise NotFound("message no longer exists")
        return found

    def read_messages(self, snapshot: Snapshot, indexes: Sequence[int]) -> dict[int, StoredMessage]:
        """read_message for several messages in one query (the shell reads ahead in windows,
        so a session RETRieving every message costs a few worker-thread hops, not one each)."""
        uids = {snapshot.uids[i]: i for i in indexes}
        rows = self._conn().execute(
            "SELECT m.uid, m.prefix, b.data, b.file, m.size FROM messages m "
            "JOIN bodies b ON b.id = m.body_id WHERE m.mailbox_id = ? "
            f"AND m.uid IN ({','.join('?' * len(uids))})",
            (snapshot.mailbox.id, *uids),
        )
        found: dict[int, StoredMessage] = {}
        for uid, prefix, data, file, size in rows:
            reader = (
                None if file is None else functools.partial(_file_chunks, self.bodies_dir / file)
            )
            found[uids[uid]] = StoredMessage(
                bytes(prefix), None if data is None else bytes(data), reader, size
            )
        return found

    def mark_seen(self, items: Sequence[tuple[int, int]]) -> None:
        """Set \\Seen on (mailbox_id, uid) pairs, many sessions' RETRs in one transaction.
        \\Seen is advisory state: NORMAL sync is still crash-consistent in WAL mode (only the
        last flag changes may be lost on power failure) and saves an fsync per batch."""
        conn = self._conn()
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._tx() as tx:
                tx.executemany(
                    f"UPDATE messages SET flags = flags | {SEEN} WHERE mailbox_id = ? AND uid = ?",
                    items,
                )
        finally:
            conn.execute("PRAGMA synchronous=FULL")

    def expunge(self, mailbox_id: int, uids: Sequence[int]) -> int:
        now = _now()
        count = 0
        with self._tx() as conn:
            for i in range(0, len(uids), _CHUNK):
                part = uids[i : i + _CHUNK]
                gone = conn.execute(
                    "UPDATE messages SET expunged_at = ? WHERE mailbox_id = ? "
                    f"AND expunged_at IS NULL AND uid IN ({','.join('?' * len(part))}) "
                    "RETURNING size",
                    (now, mailbox_id, *part),
                ).fetchall()
                # Usage drops here, with the expunge the user sees (issue 12), not later
                # when the collector removes the rows.
                self._quota_move(conn, mailbox_id, [-int(r[0]) for r in gone])
                count += len(gone)
        return count

    def close_maildrop(self, snapshot: Snapshot) -> None:
        self._end_hold(snapshot.opened_at)

    def _end_hold(self, opened: float) -> None:
        with self._lock:
            self._open[opened] -= 1
            if self._open[opened] <= 0:
                del self._open[opened]
            self._publish_hold()

    def _publish_hold(self) -> None:
        """Tell the other workers this process's oldest open snapshot (with self._lock held)."""
        if self._holds is not None:
            self._holds.publish(min(self._open) if self._open else None)

    # --- the collector (the safety mechanism) ---
    def open_session(self, mailbox: Mailbox, individual: str | None, account: str) -> OpenedSession:
        """The three calls in order: the embedded store has no network round trip to save."""
        snapshot = self.open_maildrop(mailbox, individual)
        try:
            pending = self.pending_alert(account) is not None
        except BaseException:
            self.close_maildrop(snapshot)
            raise
        return OpenedSession(snapshot, self.other_sessions(snapshot), pending)

    def other_sessions(self, snapshot: Snapshot) -> int:
        """The embedded store has no session registry: the process that serves it counts its
        own sessions (cgpop/login.py SessionCaps)."""
        return 0

    def collect(self) -> int:
        """Remove expunged copies and unreferenced bodies that no open session can still read.
        Only the serving processes call this: they alone know which sessions are open (each
        worker its own, the others' through the HoldBoard)."""
        with self._lock:
            horizon = min(self._open) if self._open else float("inf")
        others = None if self._holds is None else self._holds.oldest()
        horizon = min(horizon, _now(), float("inf") if others is None else others)
        files: list[str] = []
        with self._tx() as conn:
            conn.execute(
                "DELETE FROM messages WHERE expunged_at IS NOT NULL AND expunged_at < ?",
                (horizon,),
            )
            rows = conn.execute(
                "SELECT id, file FROM bodies WHERE refs = 0 AND zero_at < ?", (horizon,)
            ).fetchall()
            for i in range(0, len(rows), _CHUNK):
                part = [r[0] for r in rows[i : i + _CHUNK]]
                conn.execute(f"DELETE FROM bodies WHERE id IN ({','.join('?' * len(part))})", part)
            files = [r[1] for r in rows if r[1]]
        for rel in files:
            with contextlib.suppress(FileNotFoundError):
                (self.bodies_dir / rel).unlink()
        return len(rows)

    def remove_orphan_files(self) -> int:
        """At start: remove body files no row names (a crash between fsync and commit), but
        never one a live writer still holds (see the module docstring)."""
        known = {
            r[0] for r in self._conn().execute("SELECT file FROM bodies WHERE file IS NOT NULL")
        }
        removed = 0
        for path in self.bodies_dir.glob("*/*"):
            in_tmp = path.parent.name == "tmp"
            rel = f"{path.parent.name}/{path.name}"
            if not in_tmp and rel in known:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # renamed into place or removed by its writer meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a writer's transaction has not ended yet
                # Locked: its writer is done. It may have committed since `known` was read.
                if not in_tmp and self._body_file_named(rel):
                    continue
                path.unlink(missing_ok=True)
                removed += 1
            finally:
                os.close(fd)
        return removed

    def _body_file_named(self, rel: str) -> bool:
        row = self._conn().execute("SELECT 1 FROM bodies WHERE file = ?", (rel,)).fetchone()
        return row is not None

    def prune_duplicates(self) -> None:
        if self.duplicate_window is not None:
            with self._tx() as conn:
                conn.execute(
                    "DELETE FROM duplicates WHERE seen_at < ?", (_now() - self.duplicate_window,)
                )
