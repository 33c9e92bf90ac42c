"""Failed-login delay: grows per peer and per account, decays, and memory stays bounded."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from cgpop.penalty import Penalty, PenaltyPolicy, peer_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**kw: Any) -> tuple[Penalty, Clock]:
    clock = Clock()
    return Penalty(PenaltyPolicy(**kw), clock=clock), clock


def test_no_failures_no_delay() -> None:
    penalty, _ = make()
    assert penalty.delay_for("192.0.2.1", "alice") == 0.0


def test_delay_grows_then_caps() -> None:
    penalty, _ = make(base=0.25, maximum=5.0)
    delays = []
    for _ in range(8):
        penalty.record_failure("192.0.2.1", "alice")
        delays.append(penalty.delay_for("192.0.2.1", "alice"))
    assert delays[0] > 0
    assert all(a < b for a, b in itertools.pairwise(delays[:5]))
    assert delays[-1] == 5.0
    assert max(delays) == 5.0


def test_per_account_follows_the_account_across_addresses() -> None:
    penalty, _ = make()
    for i in range(4):
        penalty.record_failure(f"192.0.2.{i}", "alice")
    assert penalty.delay_for("203.0.113.9", "alice") > penalty.delay_for("203.0.113.9", "bob")
    assert penalty.delay_for("203.0.113.9", "ALICE") == penalty.delay_for("203.0.113.9", "alice")


def test_per_peer_follows_the_address_across_accounts() -> None:
    penalty, _ = make()
    for i in range(4):
        penalty.record_failure("192.0.2.1", f"user{i}")
    assert penalty.delay_for("192.0.2.1", "fresh") > 0
    assert penalty.delay_for("192.0.2.2", "fresh") == 0.0


def test_ipv6_tracked_per_64() -> None:
    penalty, _ = make()
    penalty.record_failure("2001:db8:1:2::1", None)
    assert penalty.delay_for("2001:db8:1:2:ffff::9") > 0
    assert penalty.delay_for("2001:db8:1:3::1") == 0.0
    assert peer_key("::ffff:192.0.2.1") == "192.0.2.1"


def test_decays_after_quiet_time() -> None:
    penalty, clock = make(decay=60.0)
    for _ in range(4):
        penalty.record_failure("192.0.2.1", "alice")
    high = penalty.delay_for("192.0.2.1", "alice")
    clock.now += 61
    lower = penalty.delay_for("192.0.2.1", "alice")
    assert 0 < lower < high
    clock.now += 60 * 4
    assert penalty.delay_for("192.0.2.1", "alice") == 0.0
    assert len(penalty) == 0  # fully decayed entries are dropped


def test_success_clears_only_that_address_for_that_account() -> None:
    penalty, _ = make(base=0.25, maximum=5.0)
    for _ in range(3):
        penalty.record_failure("192.0.2.1", "alice@example.com")
    before = penalty.delay_for("192.0.2.1", "alice@example.com")
    assert penalty.turn_wait("192.0.2.1", "alice@example.com") == 1.0  # 3 failures: 1 s
    # Somebody else's success (another address, or this address on another account) clears
    # nothing: an attacker with an account of its own cannot wipe its record.
    penalty.record_success("192.0.2.9", "alice@example.com")
    penalty.record_success("192.0.2.1", "mallory@example.com")
    assert penalty.delay_for("192.0.2.1", "alice@example.com") == before
    assert penalty.turn_wait("192.0.2.1", "alice@example.com") == 1.0
    # Alice from that address: her turn is free again at once.
    penalty.record_success("192.0.2.1", "alice@example.com")
    assert penalty.turn_wait("192.0.2.1", "alice@example.com") == 0.0
    assert penalty.pair_failures("192.0.2.1", "alice@example.com") == 0


def test_turn_wait_follows_the_pair_only() -> None:
    penalty, clock = make(base=0.25, maximum=5.0)
    assert penalty.turn_wait("192.0.2.1", "alice@example.com") == 0.0
    for _ in range(10):
        penalty.record_failure("192.0.2.1", "alice@example.com")
    assert penalty.turn_wait("192.0.2.1", "alice@example.com") == 5.0
    clock.now += 2
    assert penalty.turn_wait("192.0.2.1", "alice@example.com") == 3.0
    # Other addresses, and this address on other accounts, do not wait for this pair.
    assert penalty.turn_wait("192.0.2.2", "alice@example.com") == 0.0
    assert penalty.turn_wait("192.0.2.1", "bob@example.com") == 0.0


def test_memory_bounded_evicts_oldest() -> None:
    penalty, clock = make(max_keys=100)
    penalty.record_failure("198.51.100.1", None)
    for i in range(1000):
        clock.now += 0.001
        penalty.record_failure(f"10.0.{i // 256}.{i % 256}", f"user{i}")
        assert len(penalty) <= 100
    assert penalty.delay_for("198.51.100.1") == 0.0  # the oldest was forgotten
    assert penalty.delay_for("10.0.3.231", "user999") > 0  # the newest is kept


def test_count_ceiling_keeps_forgetting_prompt() -> None:
    penalty, clock = make(decay=10.0, max_count=4)
    for _ in range(1000):
        penalty.record_failure("192.0.2.1")
    clock.now += 41
    assert penalty.delay_for("192.0.2.1") == 0.0


@pytest.mark.parametrize(
    "kw", [{"base": 2.0, "maximum": 1.0}, {"decay": 0.0}, {"max_keys": 0}, {"base": -1.0}]
)
def test_bad_policy(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PenaltyPolicy(**kw)
