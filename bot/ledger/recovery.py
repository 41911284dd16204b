"""Restart safety: what to do with jobs a dead process left `queued` or `running`.

At start-up the bot calls `plan_recovery(ledger)` once, before it takes new work. Interrupted
jobs go back to `queued` (same row, same seed, same reservation: nothing is counted twice)
and are split in two:

- `requeue`: the interaction token is still usable (the bot judges that on its estimate of
  Discord's clock, see `bot/timing/clock.py`): run again and answer the interaction;
- `post_to_channel`: the token is dead (it is forgotten here): run again and post the result
  as a plain channel message mentioning the user, or, if the bot may not post there,
  `give_up` on it, which fails the job and gives its images back.

The Discord side (and deciding whether it may post) belongs to the bot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from .jobs import JobRecord
from .shards import Shards
from .store import Ledger

__all__ = ["RecoveryPlan", "TokenCheck", "classify", "give_up", "plan_recovery"]

#: Whether a job's interaction token can still be used to answer it.
TokenCheck = Callable[[JobRecord], bool]

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


def classify(jobs: Iterable[JobRecord], token_usable: TokenCheck) -> RecoveryPlan:
    """Split jobs by whether their interaction token is still usable (pure)."""
    requeue: list[JobRecord] = []
    post: list[JobRecord] = []
    for job in sorted(jobs, key=lambda j: (j.queued_at, j.id)):
        if job.request.interaction_token is not None and token_usable(job):
            requeue.append(job)
        else:
            post.append(job)
    return RecoveryPlan(tuple(requeue), tuple(post))


async def plan_recovery(
    ledger: Ledger, token_usable: TokenCheck, shards: Shards | None = None
) -> RecoveryPlan:
    """Re-queue every interrupted job of `shards`' guilds (default: all) and say how to
    deliver each (see the module doc)."""
    jobs = await ledger.requeue_interrupted(shards)
    plan = classify(jobs, token_usable)
    await ledger.forget_tokens(j.id for j in plan.post_to_channel)
    forgotten = (
        replace(j, request=replace(j.request, interaction_token=None)) for j in plan.post_to_channel
    )
    return RecoveryPlan(plan.requeue, tuple(forgotten))


async def give_up(ledger: Ledger, job_id: int, error: str = GIVE_UP_ERROR) -> bool:
    """Fail a recovered job the bot cannot deliver; its images are given back."""
    return await ledger.mark_failed(job_id, error)
