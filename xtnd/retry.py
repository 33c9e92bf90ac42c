"""The relay queue's retry schedule: when to try a deferred message again, and when to give up.

Pure functions of their arguments (no clock reads), so the queue and its tests agree exactly.
RFC 5321 section 4.5.4.1: the retry interval SHOULD be at least 30 minutes and give-up time at
least 4-5 days; the first few retries here come sooner because most temporary failures
(greylisting, a busy smarthost) clear within minutes, after which the schedule settles at hourly.
"""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = ["DEFAULT_MAX_AGE", "SCHEDULE", "delay", "expired", "next_attempt"]

# Waits after the 1st, 2nd, ... failed attempt; every later wait is the last entry (hourly).
SCHEDULE: tuple[timedelta, ...] = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(minutes=30),
    timedelta(hours=1),
)
# RFC 5321 section 4.5.4.1: "the give-up time generally needs to be at least 4-5 days".
DEFAULT_MAX_AGE = timedelta(days=5)


def delay(attempts: int, schedule: tuple[timedelta, ...] = SCHEDULE) -> timedelta:
    """The wait after `attempts` failed attempts (attempts >= 1)."""
    if attempts < 1:
        raise ValueError("attempts counts failed attempts and starts at 1")
    if not schedule:
        raise ValueError("empty schedule")
    return schedule[min(attempts, len(schedule)) - 1]


def next_attempt(
    attempts: int, now: datetime, schedule: tuple[timedelta, ...] = SCHEDULE
) -> datetime:
    """When to try again, given the number of failed attempts so far and the current time."""
    return now + delay(attempts, schedule)


def expired(first_seen: datetime, now: datetime, max_age: timedelta = DEFAULT_MAX_AGE) -> bool:
    """True once a message queued at `first_seen` is too old to retry (it then bounces)."""
    return now - first_seen >= max_age
