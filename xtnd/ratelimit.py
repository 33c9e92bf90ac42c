"""Per-account submission rate limit: messages and recipients in the last hour (issue 5).

A sliding window over the store's record of accepted submissions (cgpop.store.api.Submissions).
`xtnd.submit` judges a submission with `judge` on a reader first, so one over the limit is
refused before any local copy is delivered, then again inside the store's transaction that
records it and queues its remote recipients (`commit_submission`), so two sessions of one
account cannot both slip under the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from cgpop.store.api import SubmissionCounts

__all__ = ["WINDOW", "Limits", "judge"]

WINDOW = 3600.0  # "per hour"


@dataclass(frozen=True, slots=True)
class Limits:
    messages_per_hour: int
    recipients_per_hour: int


def judge(counts: SubmissionCounts, recipients: int, limits: Limits) -> str | None:
    """None when one more message to `recipients` fits beside `counts`; else the reason."""
    if counts.messages + 1 > limits.messages_per_hour:
        return f"rate limit: at most {limits.messages_per_hour} messages per hour"
    if counts.recipients + recipients > limits.recipients_per_hour:
        return f"rate limit: at most {limits.recipients_per_hour} recipients per hour"
    return None
