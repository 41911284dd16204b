"""Restart safety: what to do with jobs a dead process left `queued` or `running`.

At start-up the bot calls `plan_recovery(ledger)` once, before it takes new work. Interrupted
jobs go back to `queued` (same row, same seed, same reservation: nothing is counted twice)
and are split in two:

- `requeue`: the interaction token is still usable (queued under 14 minutes ago: Discord's
  15-minute token lifetime less a safety margin): run again and answer the interaction;
- `post_to_channel`: the token is dead (it is forgotten here): run again and post the result
  as a plain channel message mentioning the user, or, if the bot may not post there,
  `give_up` on it, which fails the job and gives its images back.

The Discord side (and deciding whether it may post) belongs to the bot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from .jobs import JobRecord
from .store import Ledger

__all__ = [
    "INTERACTION_TOKEN_TTL",
    "TOKEN_SAFETY_MARGIN",
    "RecoveryPlan",
    "classify",
    "give_up",
    "plan_recovery",
]

#: How long Discord accepts an interaction token for follow-ups and edits.
INTERACTION_TOKEN_TTL = timedelta(minutes=15)
#: Left for the job to run and the answer to reach Discord before the token dies.
TOKEN_SAFETY_MARGIN = timedelta(minutes=1)

GIVE_UP_ERROR = "the bot restarted and could not deliver the result"


@dataclass(frozen=True, slots=True)
class RecoveryPlan:
    """Interrupted jobs by what the bot should do with them, oldest first."""

    requeue: tuple[JobRecord, ...]  # answer through the interaction (token still valid)
    post_to_channel: tuple[JobRecord, ...]  # post in the channel, mentioning the user

    def __len__(self) -> int:
        return len(self.requeue) + len(self.post_to_channel)

    def __iter__(self) -> Iterator[JobRecord]:
        yield from self.requeue
        yield from self.post_to_channel


def classify(
    jobs: Iterable[JobRecord],
    now: datetime,
    *,
    usable_for: timedelta = INTERACTION_TOKEN_TTL - TOKEN_SAFETY_MARGIN,
) -> RecoveryPlan:
    """Split jobs by whether their interaction token is still usable at `now` (pure)."""
    requeue: list[JobRecord] = []
    post: list[JobRecord] = []
    for job in sorted(jobs, key=lambda j: (j.queued_at, j.id)):
        if job.interaction_token is not None and now - job.queued_at < usable_for:
            requeue.append(job)
        else:
            post.append(job)
    return RecoveryPlan(tuple(requeue), tuple(post))


async def plan_recovery(ledger: Ledger) -> RecoveryPlan:
    """Re-queue every interrupted job and say how to deliver each (see the module doc)."""
    jobs = await ledger.requeue_interrupted()
    plan = classify(jobs, ledger.now())
    await ledger.forget_tokens(j.id for j in plan.post_to_channel)
    return RecoveryPlan(
        plan.requeue,
        tuple(dataclasses.replace(j, interaction_token=None) for j in plan.post_to_channel),
    )


async def give_up(ledger: Ledger, job_id: int, error: str = GIVE_UP_ERROR) -> bool:
    """Fail a recovered job the bot cannot deliver; its images are given back."""
    return await ledger.mark_failed(job_id, error)
