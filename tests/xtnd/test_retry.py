"""The retry schedule and the give-up rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from xtnd.retry import DEFAULT_MAX_AGE, delay, expired, next_attempt

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def test_schedule_then_hourly() -> None:
    minutes = [delay(n) / timedelta(minutes=1) for n in range(1, 9)]
    assert minutes == [1, 5, 15, 30, 60, 60, 60, 60]
    assert next_attempt(2, T0) == T0 + timedelta(minutes=5)


def test_custom_schedule_and_bad_input() -> None:
    assert next_attempt(3, T0, (timedelta(seconds=1),)) == T0 + timedelta(seconds=1)
    with pytest.raises(ValueError):
        delay(0)
    with pytest.raises(ValueError):
        delay(1, ())


def test_expired() -> None:
    assert not expired(T0, T0 + DEFAULT_MAX_AGE - timedelta(seconds=1))
    assert expired(T0, T0 + DEFAULT_MAX_AGE)
    assert expired(T0, T0 + timedelta(hours=2), timedelta(hours=1))
