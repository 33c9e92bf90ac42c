"""The failed-login penalty in shared memory (cgpop.shared.SharedBook, issue 14): the same
rules as in one process, one pair's turn for every forked worker, and the collision rule: two
keys sharing a slot only ever make the penalty stricter, never let anyone through sooner."""

from __future__ import annotations

import itertools
import subprocess
import sys

from cgpop.penalty import Penalty, PenaltyPolicy, Record
from cgpop.shared import SharedBook, _digest


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(slots: int = 1 << 10, **kw: float) -> tuple[Penalty, Clock]:
    clock = Clock()
    return Penalty(PenaltyPolicy(**kw), clock=clock, book=SharedBook(slots)), clock


def test_the_rules_of_one_process_hold_in_the_shared_book() -> None:
    penalty, clock = make(base=0.25, maximum=5.0, decay=60.0)
    assert penalty.delay_for("192.0.2.1", "alice") == 0.0
    for _ in range(3):
        penalty.record_failure("192.0.2.1", "alice@example.com")
    assert penalty.delay_for("192.0.2.1", "alice@example.com") == 1.0
    assert penalty.delay_for("203.0.113.9", "alice@example.com") == 1.0  # the account's
    assert penalty.delay_for("192.0.2.1", "bob@example.com") == 1.0  # the address's
    assert penalty.turn_wait("192.0.2.1", "alice@example.com") == 1.0
    penalty.record_success("192.0.2.9", "alice@example.com")  # another address: nothing
    assert penalty.turn_wait("192.0.2.1", "alice@example.com") == 1.0
    penalty.record_success("192.0.2.1", "alice@example.com")
    assert penalty.turn_wait("192.0.2.1", "alice@example.com") == 0.0
    clock.now += 60 * 3
    assert penalty.delay_for("192.0.2.1", "alice@example.com") == 0.0
    assert len(penalty) == 0  # decayed records are emptied, so their slots are reused


def test_a_claimed_turn_makes_the_next_check_wait_as_after_a_failure() -> None:
    penalty, clock = make(base=0.25, maximum=5.0)
    assert penalty.claim_turn("192.0.2.1", "alice") == 0.0  # no failures: never claimed
    assert penalty.claim_turn("192.0.2.1", "alice") == 0.0
    penalty.record_failure("192.0.2.1", "alice")
    clock.now += 0.25
    assert penalty.claim_turn("192.0.2.1", "alice") == 0.0  # the turn is this check's
    assert penalty.claim_turn("192.0.2.1", "alice") == 0.5  # as if it failed (2 failures)
    clock.now += 0.1
    penalty.record_failure("192.0.2.1", "alice")  # it did: the wait runs from now
    assert penalty.turn_wait("192.0.2.1", "alice") == 0.5


def colliding(slots: int, prefix: str, count: int) -> list[str]:
    """`count` accounts whose pair keys with 192.0.2.1 fall in one slot of a `slots` table."""
    by_slot: dict[int, list[str]] = {}
    for i in itertools.count():
        name = f"{prefix}{i}"
        slot = _digest(f"pair 192.0.2.1 {name}") & (slots - 1)
        by_slot.setdefault(slot, []).append(name)
        if len(by_slot[slot]) == count:
            return by_slot[slot]
    raise AssertionError("unreachable")


def test_a_collision_only_makes_the_penalty_stricter() -> None:
    book = SharedBook(1 << 12)
    a, b = (f"pair 192.0.2.1 {n}" for n in colliding(1 << 12, "user", 2))
    book.put(a, Record(3, 1000.0, 1002.0))
    # b reads the slot it shares with a: a's failures count for b as well.
    assert book.get(b) == Record(3, 1000.0, 1002.0)
    # A failure of b adds to what it read; the slot now holds both keys' failures.
    book.put(b, Record(4, 1001.0, 1003.0))
    assert book.get(a) == Record(4, 1001.0, 1003.0)
    # Neither success may clear it: the other key's failures are in it.
    book.clear(a)
    book.clear(b)
    assert book.get(a) == Record(4, 1001.0, 1003.0)
    # Once decayed it is emptied, and then owned by the next key alone again.
    book.drop(a)
    assert book.get(b) is None
    book.put(b, Record(1, 2000.0, 2000.25))
    book.clear(b)
    assert book.get(b) is None


def test_a_success_of_a_key_never_shortens_a_colliding_attackers_turn() -> None:
    slots = 4
    attacker, owner = colliding(slots, "user", 2)
    penalty, _ = make(slots, base=0.25, maximum=5.0)
    for _ in range(10):
        penalty.record_failure("192.0.2.1", attacker)
    wait = penalty.turn_wait("192.0.2.1", attacker)
    assert wait == 5.0
    assert penalty.turn_wait("192.0.2.1", owner) == 5.0  # stricter for the owner, not looser
    penalty.record_failure("192.0.2.1", owner)
    penalty.record_success("192.0.2.1", owner)
    penalty.record_success("192.0.2.1", attacker)
    assert penalty.turn_wait("192.0.2.1", attacker) == 5.0


# Four forked workers claim the turn of one failing pair at the same instant: one gets it.
CLAIMS = r"""
import os
from cgpop.penalty import Penalty, PenaltyPolicy
from cgpop.shared import SharedBook

now = [1000.0]
penalty = Penalty(PenaltyPolicy(base=0.25, maximum=5.0), clock=lambda: now[0], book=SharedBook())
penalty.record_failure("192.0.2.1", "alice")
now[0] += 1.0  # the turn is free
pids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        os._exit(int(penalty.claim_turn("192.0.2.1", "alice") == 0.0))
    pids.append(pid)
got = sum(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids)
# A failure recorded in another process sets the turn seen here.
pid = os.fork()
if pid == 0:
    penalty.record_failure("192.0.2.1", "alice")
    os._exit(0)
os.waitpid(pid, 0)
print(got, penalty.pair_failures("192.0.2.1", "alice"), penalty.turn_wait("192.0.2.1", "alice"))
"""


def test_one_worker_of_many_gets_a_pairs_turn() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CLAIMS], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["1", "2", "0.5"]
