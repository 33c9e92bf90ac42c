"""Login turns (issue 10, defect 7): the checks of one (address, account) pair never overlap,
however many connections try at once; a failing pair's queue is bounded; concurrent correct
logins all go through. Delays are zero here: this tests order, not time."""

from __future__ import annotations

import asyncio

from cgpop.loginturn import MAX_QUEUED, THROTTLED, login_turn
from cgpop.penalty import Penalty, PenaltyPolicy


def run_attempts(penalty: Penalty, n: int, *, fail: bool) -> tuple[int, int, int]:
    """n concurrent attempts of one pair: (max checks in flight, checks made, throttled)."""
    in_flight = peak = checks = throttled = 0

    async def attempt() -> None:
        nonlocal in_flight, peak, checks, throttled
        async with login_turn(penalty, "192.0.2.1", "alice@example.com") as refused:
            if refused is not None:
                assert refused is THROTTLED
                throttled += 1
                return
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0)  # the check, off the loop
            checks += 1
            if fail:
                penalty.record_failure("192.0.2.1", "alice@example.com")
            else:
                penalty.record_success("192.0.2.1", "alice@example.com")
            in_flight -= 1

    async def main() -> None:
        await asyncio.gather(*(attempt() for _ in range(n)))

    asyncio.run(main())
    return peak, checks, throttled


def test_concurrent_correct_logins_all_go_through_one_at_a_time() -> None:
    penalty = Penalty(PenaltyPolicy(base=0.0, maximum=0.0))
    assert run_attempts(penalty, 20, fail=False) == (1, 20, 0)


def test_a_failing_pair_checks_one_at_a_time_and_queues_few() -> None:
    penalty = Penalty(PenaltyPolicy(base=0.0, maximum=0.0))
    penalty.record_failure("192.0.2.1", "alice@example.com")
    peak, checks, throttled = run_attempts(penalty, 20, fail=True)
    assert peak == 1
    assert checks == MAX_QUEUED + 1 and throttled == 20 - checks
