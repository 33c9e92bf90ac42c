"""The XTND XMIT outbound queue and the submission record on PostgreSQL: api.OutboundQueue and
api.Submissions, for several nodes at once. The states and their rules are in
api.OutboundQueue; what the cluster adds:

* Every node may run the relay worker. `claim_due` takes rows with FOR UPDATE SKIP LOCKED, so
  two nodes never claim the same recipient, and marks them `sending` with this process's
  registry entry (store_instances). The claim holds while that process beats; when it has
  been silent for its node_timeout its claims go back to the queue (`claim_due` and
  `recover_queue` requeue them), so a message is relayed once unless a node dies mid-attempt
  (then at least once, as on one node).
* `recover_queue` at start-up requeues this process's own claims and dead processes' claims,
  never a live node's.
* `take_submission_slot` serialises one account's submissions across nodes with an advisory
  lock on the account, so parallel submissions on several nodes cannot together pass a limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cgpop.spool import to_bytes
from cgpop.store.api import (
    BOUNCE_BATCH,
    BOUNCE_HEAD,
    Bounce,
    Job,
    Outbound,
    Update,
)
from cgpop.store.pg_access import PgAccess
from cgpop.store.pg_base import Conn, PgDatabase
from cgpop.store.sql_queue import SqlQueue, bounce_of

# A claim whose instance is gone or silent past its own timeout is abandoned.
_ABANDONED = (
    "state = 'sending' AND NOT EXISTS (SELECT 1 FROM store_instances i "
    "WHERE i.id = queue_recipients.claimed_by "
    "AND i.heartbeat >= now() - i.timeout * interval '1 second')"
)
# The advisory lock namespace of commit_submission (pg_advisory_xact_lock(int, int)).
_SUBMISSION_LOCK = 0x63677073  # "cgps"


def _enqueue(conn: Conn, outbound: Outbound, now: float) -> int:
    row = conn.execute(
        "INSERT INTO queue_messages (sender, account, message, created) "
        "VALUES (%s, %s, %s, %s) RETURNING id",
        # One bytea per queued message (XTND XMIT bounds it, 25 MiB by default): a spooled
        # one is read whole here. Chunked rows as for mail bodies would stream it.
        (outbound.sender, outbound.account, to_bytes(outbound.message), now),
    ).fetchone()
    assert row is not None
    message_id = int(row[0])
    conn.execute(
        "INSERT INTO queue_recipients (message_id, recipient, next_attempt) "
        "SELECT %s, r, %s FROM unnest(%s::text[]) AS r",
        (message_id, now, list(outbound.recipients)),
    )
    return message_id


class PgQueue(PgDatabase, PgAccess, SqlQueue):
    _SUBMISSION_ID = "id"

    # --- api.OutboundQueue ---
    def enqueue(self, outbound: Outbound, now: float) -> int:
        with self._tx() as conn:
            return _enqueue(conn, outbound, now)

    def _requeue_abandoned(self, conn: Conn, now: float, also_mine: bool) -> int:
        mine = " OR (state = 'sending' AND claimed_by = %s)" if also_mine else ""
        args: tuple[object, ...] = (now, self._instance) if also_mine else (now,)
        cur = conn.execute(
            "UPDATE queue_recipients SET state = 'queued', next_attempt = %s, claimed_by = NULL,"
            " last_error = coalesce(last_error, 'interrupted while sending')"
            f" WHERE ({_ABANDONED}){mine}",
            args,
        )
        return cur.rowcount

    def recover_queue(self, now: float) -> int:
        with self._tx() as conn:
            return self._requeue_abandoned(conn, now, also_mine=True)

    def claim_due(self, now: float, limit: int) -> list[Job]:
        instance = self._ensure_instance()
        with self._tx() as conn:
            self._requeue_abandoned(conn, now, also_mine=False)
            # Rows another node is claiming right now are skipped, not waited for.
            rows = conn.execute(
                "SELECT message_id, recipient, attempts FROM queue_recipients "
                "WHERE state = 'queued' AND next_attempt <= %s AND message_id IN ("
                "  SELECT DISTINCT message_id FROM queue_recipients"
                "  WHERE state = 'queued' AND next_attempt <= %s ORDER BY message_id LIMIT %s)"
                " ORDER BY message_id, recipient FOR UPDATE SKIP LOCKED",
                (now, now, limit),
            ).fetchall()
            if not rows:
                return []
            conn.execute(
                "UPDATE queue_recipients r SET state = 'sending', claimed_by = %s "
                "FROM unnest(%s::bigint[], %s::text[]) AS c(message_id, recipient) "
                "WHERE r.message_id = c.message_id AND r.recipient = c.recipient",
                (instance, [int(r[0]) for r in rows], [str(r[1]) for r in rows]),
            )
            by_message: dict[int, list[tuple[str, int]]] = {}
            for message_id, recipient, attempts in rows:
                by_message.setdefault(int(message_id), []).append((str(recipient), int(attempts)))
            messages = conn.execute(
                "SELECT id, sender, message, created FROM queue_messages WHERE id = ANY(%s) "
                "ORDER BY id",
                (list(by_message),),
            ).fetchall()
        return [
            Job(
                int(mid),
                str(sender),
                bytes(message),
                float(created),
                tuple(r for r, _ in by_message[int(mid)]),
                tuple(a for _, a in by_message[int(mid)]),
            )
            for mid, sender, message, created in messages
        ]

    def record_attempt(self, message_id: int, updates: Iterable[Update]) -> None:
        with self._tx() as conn, conn.cursor() as cur:
            cur.executemany(
                "UPDATE queue_recipients SET state = %s, next_attempt = %s, last_error = %s,"
                " attempts = attempts + 1, claimed_by = NULL"
                " WHERE message_id = %s AND recipient = %s",
                [
                    (u.state.value, u.next_attempt, u.last_error, message_id, u.recipient)
                    for u in updates
                ],
            )
            self._drop_if_done(conn, message_id)

    def requeue(self, message_id: int, recipients: Sequence[str], when: float) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE queue_recipients SET state = 'queued', next_attempt = %s,"
                " attempts = attempts + 1, claimed_by = NULL,"
                " last_error = coalesce(last_error, 'outcome of the attempt not recorded')"
                " WHERE message_id = %s AND recipient = ANY(%s) AND state = 'sending'",
                (when, message_id, list(recipients)),
            )

    def pending_bounces(self, now: float, limit: int = BOUNCE_BATCH) -> list[Bounce]:
        rows = self._all(
            "SELECT m.id, m.sender, m.account, substring(m.message FROM 1 FOR %s), m.created,"
            " f.failed, f.errors, f.attempts FROM ("
            "  SELECT message_id, array_agg(recipient ORDER BY recipient) AS failed,"
            "   array_agg(last_error ORDER BY recipient) AS errors, max(attempts) AS attempts"
            "  FROM queue_recipients WHERE state = 'failed' AND next_attempt <= %s"
            "  GROUP BY message_id ORDER BY message_id LIMIT %s"
            ") AS f JOIN queue_messages AS m ON m.id = f.message_id ORDER BY m.id",
            (BOUNCE_HEAD, now, limit),
        )
        return [
            bounce_of(mid, sender, account, head, created, zip(failed, errors, strict=True), n)
            for mid, sender, account, head, created, failed, errors, n in rows
        ]

    def defer_bounce(self, message_id: int, recipients: Sequence[str], when: float) -> None:
        with self._conn() as conn:
            conn.execute(
                "UPDATE queue_recipients SET next_attempt = %s, attempts = attempts + 1"
                " WHERE message_id = %s AND recipient = ANY(%s) AND state = 'failed'",
                (when, message_id, list(recipients)),
            )

    def finish_bounce(self, message_id: int, recipients: Sequence[str]) -> None:
        with self._tx() as conn:
            conn.execute(
                "DELETE FROM queue_recipients WHERE message_id = %s AND recipient = ANY(%s)"
                " AND state = 'failed'",
                (message_id, list(recipients)),
            )
            self._drop_if_done(conn, message_id)

    # --- api.Submissions ---
    def _lock_submissions(self, conn: Conn, account: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_SUBMISSION_LOCK, account))
