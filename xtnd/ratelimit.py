"""Per-account submission rate limit: messages and recipients in the last hour (issue 5).

A sliding window over the store's record of accepted submissions (cgpop.store.api.Submissions).
`xtnd.submit` judges a submission with `judge` on a reader first, so one already over the limit
costs no writer transaction; then the store takes the limit (`take_submission_slot`): judged
again and recorded in one transaction on the writer *before* anything is stored or queued, so
parallel sessions of one account cannot together deliver more than the limit (issue 10, defect
3). If the submission then fails, its slot is given back (`release_submission_slot`).
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
