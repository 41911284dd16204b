"""Job value objects: what the bot asks for, what the ledger records, and the legal moves.

The ORM rows never leave the ledger; callers get these frozen dataclasses instead, so a
stale or detached row can never be mutated by accident.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

__all__ = [
    "ACTIVE_STATUSES",
    "COUNTED_STATUSES",
    "TERMINAL_STATUSES",
    "JobKind",
    "JobRecord",
    "JobRequest",
    "JobStatus",
    "RefusalReason",
    "new_job_key",
]

#: Hex digits of a job's key: 48 random bits, short enough for a button's custom id.
JOB_KEY_HEX = 12


def new_job_key() -> str:
    """A fresh random key for a new job (see `JobRecord.key`)."""
    return secrets.token_hex(JOB_KEY_HEX // 2)


class JobKind(StrEnum):
    """What a job makes: images from a prompt (and maybe a picture), or from an earlier image."""

    IMAGINE = "imagine"
    UPSCALE = "upscale"  # one image at twice the size; costs `upscale_cost` images
    VARIATION = "variation"  # new images from one earlier image
    EDIT = "edit"  # an edit by instruction of an earlier image or a member's picture
    ZOOM = "zoom"  # an earlier image zoomed out: its border made anew
    PAN = "pan"  # an earlier image extended on one side
    REGION = "region"  # part of an earlier image made anew (Vary (Region), /inpaint)
    FIX = "fix"  # the faces of an earlier image inpainted again


#: Seeds are stored in a signed 64-bit column.
MAX_SEED = 2**63 - 1


class JobStatus(StrEnum):
    """Where a job is in its life; `refused` jobs never ran and never took any images."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REFUSED = "refused"


class RefusalReason(StrEnum):
    """Why a request was turned down; stored as text, so new codes need no migration."""

    QUOTA = "quota"  # the rolling 24-hour allowance is used up
    TOO_MANY_JOBS = "too_many_jobs"  # the user already has max_queued_per_user jobs in flight
    QUEUE_FULL = "queue_full"  # the engine's queue (all users) is full
    BLOCKED_WORD = "blocked_word"
    CHANNEL = "channel"  # not allowed in this channel
    USER_BLOCKED = "user_blocked"  # a moderator set the user's allowance to 0
    RATE_LIMITED = "rate_limited"
    INVALID = "invalid"  # parameters out of range


#: Jobs whose images count against the allowance (reserved, being made, or made).
COUNTED_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DONE}
)
#: Jobs still owed a result: they count towards `max_queued_per_user` and survive restarts.
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.REFUSED}
)


@dataclass(frozen=True, slots=True)
class JobRequest:
    """Everything needed to run a job and to deliver its result through Discord.

    Snowflakes are plain ints. `guild_id` is 0 for direct messages, which then share one
    allowance bucket. `interaction_token` lets the bot edit the response for 15 minutes; the
    ledger forgets it when the job ends.
    """

    guild_id: int
    channel_id: int
    user_id: int
    application_id: int
    interaction_id: int
    interaction_token: str | None
    prompt: str
    seed: int
    model: str
    steps: int
    guidance: float
    width: int
    height: int
    negative_prompt: str = ""
    scheduler: str = "default"
    image_count: int = 1  # images charged against the allowance
    # Images the member asked for (an upscale: 1): what a reroll asks for again, whatever
    # `image_count` became after images were withheld and given back.
    images_asked: int = 1
    reroll_of: int | None = None
    kind: JobKind = JobKind.IMAGINE
    source_job_id: int | None = None
    source_index: int | None = None
    strength: float | None = None  # image-to-image (None: from the prompt alone)
    # `/imagine fix:`: what is fixed once the images are made ("faces", "hands" or
    # "faces,hands"; empty: nothing), so a restart and a reroll fix it again.
    fix: str = ""

    def problems(self) -> list[str]:
        """Why the ledger cannot store this request, empty when it can."""
        out: list[str] = []
        if self.image_count < 1:
            out.append("image_count must be at least 1")
        if self.images_asked < 1:
            out.append("images_asked must be at least 1")
        if not 0 <= self.seed <= MAX_SEED:
            out.append(f"seed must be in 0..{MAX_SEED}")
        return out


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One stored job, as the ledger last saw it: the request it was stored for, and the
    ledger's own fields beside it. Times are timezone-aware UTC.

    `request` is the row as it stands: its `image_count` is what the job is charged now (less
    any refund; `images_asked` is what was asked), and its `interaction_token` is None once
    the job ended or the token could no longer be used.
    """

    id: int
    key: str | None  # random; with `id`, unique across databases (None: rows before 0003)
    request: JobRequest
    status: JobStatus
    refusal_reason: RefusalReason | str | None
    error: str | None
    message_id: int | None  # the progress message, then the result
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    delivery_started_at: datetime | None  # set before posting: a post may exist
    delivered_at: datetime | None

    @property
    def unkept(self) -> str | None:
        """Why a delivered job's full-size images could not be kept (a full disk), if so."""
        return self.error if self.status is JobStatus.DONE else None

    @property
    def delivered(self) -> bool:
        """Whether the result was handed to Discord (never hand it over twice)."""
        return self.delivered_at is not None

    @property
    def counts_against_quota(self) -> bool:
        return self.status in COUNTED_STATUSES

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES
