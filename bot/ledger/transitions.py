"""Job transitions: the one owner of every write to `jobs`, from reservation to refund.

    reserve (queued, or refused) → running → delivery started → done (→ images refunded)
                                 ↘ failed / cancelled (images given back), refused (queue full)

Status changes are compare-and-set updates (`UPDATE ... WHERE status IN (allowed)`): an
illegal or repeated transition (or an unknown job id) changes nothing and returns False, so a
late or duplicate event can't corrupt a job: `mark_done` is true once per job, however many
callers race to it. A dead process's jobs are put back to `queued` here too (`requeue`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Update, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .allowances import Allowances, Standing, standings_in
from .jobs import (
    ACTIVE_STATUSES,
    JobKind,
    JobRecord,
    JobRequest,
    JobStatus,
    RefusalReason,
    new_job_key,
)
from .models import Job
from .quota import CountedImages, QuotaPolicy, Reservation, available_at, images_used
from .shards import Shards
from .transactions import Transactions

__all__ = ["MAX_ERROR_CHARS", "MAX_PROMPT_CHARS", "Transitions", "record_of"]

#: Characters of a prompt the ledger keeps (more than any accepted prompt has).
MAX_PROMPT_CHARS = 2000
#: Error texts are for moderators and logs, not for storing tracebacks.
MAX_ERROR_CHARS = 2000

#: A job row has a column for every field of its request and of its record, by the same name.
_REQUEST_FIELDS = tuple(f.name for f in fields(JobRequest))
_RECORD_FIELDS = tuple(f.name for f in fields(JobRecord) if f.name != "request")
#: A change allowed from every status (a job's progress or result message).
_ANY_STATUS = frozenset(JobStatus)

# The statements of a burst's writes, built once and run on the transaction's connection,
# not through the ORM's bulk paths: on the event loop, building, keying and the ORM's
# bookkeeping cost more than the database's work.
_JOBS = Job.__table__
#: New jobs, their rows back (SQLAlchemy's "insertmanyvalues": one cached statement).
_INSERT_JOBS = insert(_JOBS).returning(*_JOBS.columns)
#: The statuses of a batch's jobs, their rows locked on PostgreSQL (in id order).
_STATUSES = (
    select(_JOBS.c.id, _JOBS.c.status)
    .where(_JOBS.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_JOBS.c.id)
    .with_for_update()
)
#: One UPDATE by primary key per set of columns changed (`_update_of`).
_UPDATES: dict[tuple[str, ...], Update] = {}


def _update_of(columns: tuple[str, ...]) -> Update:
    """The UPDATE by primary key of `columns` (their values bound as `new_<column>`, the id as
    `job_id`: a bound name may not be a column's), built once per set of columns."""
    statement = _UPDATES.get(columns)
    if statement is None:
        statement = _UPDATES[columns] = (
            update(_JOBS)
            .where(_JOBS.c.id == bindparam("job_id"))
            .values({name: bindparam(f"new_{name}") for name in columns})
        )
    return statement


def _reason(value: str | None) -> RefusalReason | str | None:
    if value is None:
        return None
    try:
        return RefusalReason(value)
    except ValueError:
        return value


def record_of(row: Job | Row[Any]) -> JobRecord:
    """The frozen view of a job row: its request, and the ledger's fields beside it."""
    request = {name: getattr(row, name) for name in _REQUEST_FIELDS} | {"kind": JobKind(row.kind)}
    values = {name: getattr(row, name) for name in _RECORD_FIELDS}
    return JobRecord(
        **values
        | {
            "request": JobRequest(**request),
            "status": JobStatus(row.status),
            "refusal_reason": _reason(row.refusal_reason),
        }
    )


def _error_text(error: str | None) -> str | None:
    return None if error is None else error[:MAX_ERROR_CHARS]


def _new_row(
    request: JobRequest, now: datetime, reason: RefusalReason | str | None, detail: str | None
) -> Job:
    return Job(**_new_values(request, now, reason, detail))


def _new_values(
    request: JobRequest, now: datetime, reason: RefusalReason | str | None, detail: str | None
) -> dict[str, Any]:
    """A new job row's columns (every row has the same ones: many insert as one statement)."""
    refused = reason is not None
    values = {name: getattr(request, name) for name in _REQUEST_FIELDS}
    for field in ("prompt", "negative_prompt"):  # a forged 3 MB prompt is not kept whole
        values[field] = values[field][:MAX_PROMPT_CHARS]
    return values | {
        "key": new_job_key(),
        "kind": str(request.kind),
        "interaction_token": None if refused else request.interaction_token,
        "status": str(JobStatus.REFUSED if refused else JobStatus.QUEUED),
        "refusal_reason": None if reason is None else str(reason),
        "error": _error_text(detail),
        "queued_at": now,
        "finished_at": now if refused else None,
    }


def _decide(
    request: JobRequest, policy: QuotaPolicy, standing: Standing, now: datetime
) -> tuple[RefusalReason | None, int | None, int | None, datetime | None]:
    """Whether `request` may be queued for a user of `standing` under `policy`: the refusal
    reason (None: accepted), the allowance that applied and the images left after it (None:
    unlimited), and for a quota refusal when it would fit."""
    images, setting = request.image_count, standing.setting
    limit = setting.limit(policy)
    reason: RefusalReason | None = None
    retry_at: datetime | None = None
    used = 0
    if setting.blocked:
        reason = RefusalReason.USER_BLOCKED
    else:
        if limit is not None:
            used = images_used(standing.counted, now)
            if used + images > limit:
                reason = RefusalReason.QUOTA
                retry_at = available_at(standing.counted, limit, images, now)
        if reason is None and standing.active >= policy.max_queued_per_user:
            reason = RefusalReason.TOO_MANY_JOBS
    if limit is None:
        return reason, None, None, retry_at
    remaining = max(0, limit - used - (images if reason is None else 0))
    return reason, limit, remaining, retry_at


def _storable(request: JobRequest) -> None:
    problems = request.problems()
    if problems:
        raise ValueError("; ".join(problems))


class Transitions:
    """Stores jobs and moves them through their life (see the module doc)."""

    def __init__(self, tx: Transactions, allowances: Allowances) -> None:
        self.tx = tx
        self.allowances = allowances

    # -- new jobs ---------------------------------------------------------------------------

    async def reserve(self, request: JobRequest) -> Reservation:
        """Check the user's allowance and in-flight jobs and store the job, atomically.

        Accepted: the job is stored `queued` and its images count from now for 24 hours.
        Refused: it is stored `refused` with the reason (`user_blocked`, `quota` with
        `retry_at`, or `too_many_jobs` when `max_queued_per_user` jobs are queued or running)
        and takes no images. Raises ValueError for a request that can't be stored at all.
        Reservations waiting for the writer together are made together (`_reserve_many`),
        before the other writes waiting (someone waits for "queued").
        """
        _storable(request)
        return await self.tx.write_batch(self._reserve_many, request, urgent=True)

    async def _reserve_many(
        self, session: AsyncSession, requests: Sequence[JobRequest]
    ) -> list[Reservation]:
        """The reservations of `requests`, in order, each seeing those before it (what each
        would get alone, one after the other), in a few statements whatever their number:
        each guild's policy and its users' standings read once, the rows inserted together."""
        keys = sorted({(r.guild_id, r.user_id) for r in requests})
        await self.tx.lock_users(session, keys)
        now = self.tx.now()
        policies: dict[int, QuotaPolicy] = {}
        standings: dict[tuple[int, int], Standing] = {}
        for guild_id in sorted({g for g, _ in keys}):
            users = [u for g, u in keys if g == guild_id]
            found = await standings_in(session, guild_id, users, now)
            policies[guild_id] = self.allowances.policy_with(guild_id, found.daily_images)
            standings |= {(guild_id, u): standing for u, standing in found.users.items()}
        rows: list[dict[str, Any]] = []
        answers: list[tuple[int | None, int | None, datetime | None]] = []
        for request in requests:
            standing = standings[(request.guild_id, request.user_id)]
            reason, limit, remaining, retry_at = _decide(
                request, policies[request.guild_id], standing, now
            )
            if reason is None:  # counted for the next request of the same user
                standing.counted.append(CountedImages(now, request.image_count))
                standing.active += 1
            rows.append(_new_values(request, now, reason, None))
            answers.append((limit, remaining, retry_at))
        # One INSERT for all (the ORM would send one per row; a VALUES list of N rows would be
        # compiled anew for each N, on the event loop): SQLAlchemy's "insertmanyvalues" runs
        # one cached statement over the rows; rows found again by their key.
        inserted = await (await session.connection()).execute(_INSERT_JOBS, rows)
        stored = {row.key: row for row in inserted}
        return [
            Reservation(record_of(stored[row["key"]]), limit, remaining, retry_at)
            for row, (limit, remaining, retry_at) in zip(rows, answers, strict=True)
        ]

    async def record_refusal(
        self, request: JobRequest, reason: RefusalReason | str, detail: str | None
    ) -> JobRecord:
        """Store a request the bot turned down before reserving (blocked word, channel...).

        It takes no images; `detail` is kept as the job's error text for moderators.
        """
        _storable(request)

        async def work(session: AsyncSession) -> JobRecord:
            row = _new_row(request, self.tx.now(), reason, detail)
            session.add(row)
            await session.flush()
            return record_of(row)

        return await self.tx.write(work)

    # -- status transitions -----------------------------------------------------------------

    async def _set_where(
        self, job_id: int, allowed: Iterable[JobStatus], values: dict[str, Any]
    ) -> bool:
        """Compare-and-set: update the job only if its status is in `allowed`. Those waiting
        for the writer together are a few statements (`_set_many`)."""
        return await self.tx.write_batch(self._set_many, (job_id, frozenset(allowed), values))

    @staticmethod
    async def _set_many(
        session: AsyncSession, items: Sequence[tuple[int, frozenset[JobStatus], dict[str, Any]]]
    ) -> list[bool]:
        """`_set_where` for many: the jobs' statuses read once (their rows locked, on
        PostgreSQL, in id order), each change decided in turn on the status those before it
        left, as if one after the other; then one UPDATE by primary key per set of columns
        changed (one cached statement, not one compiled anew for each number of jobs on the
        event loop). Under a burst (progress messages, Cancel presses, jobs starting and
        delivered) each statement alone was a trip through the busy event loop, and every
        reservation of the group waited for them all."""
        connection = await session.connection()
        ids = sorted({job_id for job_id, _allowed, _values in items})
        found = await connection.execute(_STATUSES, {"ids": ids})
        status = {job_id: JobStatus(value) for job_id, value in found}
        changes: dict[int, dict[str, Any]] = {}
        results = []
        for job_id, allowed, values in items:
            now = status.get(job_id)
            changed = now is not None and now in allowed
            if changed:
                changes.setdefault(job_id, {}).update(values)
                status[job_id] = JobStatus(values.get("status", now))
            results.append(changed)
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for job_id, new in changes.items():
            bound = {f"new_{name}": value for name, value in new.items()}
            by_columns.setdefault(tuple(sorted(new)), []).append({"job_id": job_id, **bound})
        for columns, rows in by_columns.items():
            await connection.execute(_update_of(columns), rows)
        return results

    async def mark_running(self, job_id: int) -> bool:
        """queued → running. False (and no change) from any other status."""
        return await self._set_where(
            job_id,
            {JobStatus.QUEUED},
            {"status": str(JobStatus.RUNNING), "started_at": self.tx.now()},
        )

    async def mark_done(self, job_id: int, message_id: int | None) -> bool:
        """queued/running → done; the images stay counted and the token is forgotten.

        With `message_id` (the result was posted) it is recorded and the job is marked
        delivered too (see `bot/jobs/delivery.py` for how a post is made exactly once).
        """
        now = self.tx.now()
        values: dict[str, Any] = {
            "status": str(JobStatus.DONE),
            "finished_at": now,
            "interaction_token": None,
        }
        if message_id is not None:
            values |= {"message_id": message_id, "delivered_at": now}
        return await self._set_where(job_id, ACTIVE_STATUSES, values)

    async def start_delivery(
        self, job_id: int, *, unkept: str | None, charge: int | None = None
    ) -> bool:
        """Record that the result is about to be posted (queued/running jobs only).

        From then on a restart must look for the post before posting again; the mark stays
        when a dead process's job is re-queued. `unkept`: why its full-size images could not
        be kept (a full disk), kept as the job's error (`JobRecord.unkept`). `charge`: the
        job's final price, known only now (a fix found nothing in some images), set as its
        `image_count` in the same write: an absolute value, so a second delivery after a
        restart sets the same, never gives back twice.
        """
        values: dict[str, Any] = {
            "delivery_started_at": self.tx.now(),
            "error": _error_text(unkept),
        }
        if charge is not None:
            values["image_count"] = charge
        return await self._set_where(job_id, ACTIVE_STATUSES, values)

    async def mark_failed(self, job_id: int, error: str) -> bool:
        """queued/running → failed: the images are given back."""
        return await self._end(job_id, JobStatus.FAILED, error)

    async def mark_cancelled(self, job_id: int, error: str | None) -> bool:
        """queued/running → cancelled: the images are given back."""
        return await self._end(job_id, JobStatus.CANCELLED, error)

    async def _end(self, job_id: int, status: JobStatus, error: str | None) -> bool:
        return await self._set_where(
            job_id,
            ACTIVE_STATUSES,
            {
                "status": str(status),
                "error": _error_text(error),
                "finished_at": self.tx.now(),
                "interaction_token": None,
            },
        )

    async def refuse(self, job_id: int, reason: RefusalReason | str, detail: str | None) -> bool:
        """queued → refused (e.g. the engine's queue was full): as if it never took images."""
        return await self._set_where(
            job_id,
            {JobStatus.QUEUED},
            {
                "status": str(JobStatus.REFUSED),
                "refusal_reason": str(reason),
                "error": _error_text(detail),
                "finished_at": self.tx.now(),
                "interaction_token": None,
            },
        )

    async def refund_images(self, job_id: int, images: int) -> bool:
        """Give back `images` of a done job that were never posted (moderation withheld them).

        The job then counts only the images it delivered, in the quota and in `/usage`.
        False (and no change) unless the job is done and has at least that many images.
        """
        if images < 1:
            raise ValueError("images must be at least 1")
        where = (Job.id == job_id, Job.status == str(JobStatus.DONE), Job.image_count >= images)
        refunded = update(Job).where(*where).values(image_count=Job.image_count - images)
        return await self.tx.execute(refunded) == 1

    async def set_message(self, job_id: int, message_id: int) -> bool:
        """Remember the progress/result message to edit later, whatever the job's status.
        False for an unknown job. Those waiting for the writer together are one UPDATE, with
        the status changes waiting with them (`_set_many`): a burst posts a progress message
        per job."""
        return await self._set_where(job_id, _ANY_STATUS, {"message_id": message_id})

    # -- restart recovery (see recovery.py) -------------------------------------------------

    async def requeue_interrupted(self, shards: Shards) -> tuple[JobRecord, ...]:
        """Put jobs left `running` by a dead process back to `queued`; list all queued jobs.

        Only the guilds of `shards`: another process owns the rest. Their rows, and so their
        reservations, are kept: nothing is counted twice.
        """
        mine = shards.clause(Job.guild_id)
        where = () if mine is None else (mine,)

        async def work(session: AsyncSession) -> tuple[JobRecord, ...]:
            await session.execute(
                update(Job)
                .where(Job.status == str(JobStatus.RUNNING), *where)
                .values(status=str(JobStatus.QUEUED), started_at=None)
                .execution_options(synchronize_session=False)
            )
            rows = await session.scalars(
                select(Job)
                .where(Job.status == str(JobStatus.QUEUED), *where)
                .order_by(Job.queued_at, Job.id)
            )
            return tuple(record_of(j) for j in rows)

        return await self.tx.write(work)

    async def forget_tokens(self, job_ids: Iterable[int]) -> int:
        """Drop interaction tokens that can no longer be used; returns how many were set."""
        ids = sorted(set(job_ids))
        if not ids:
            return 0
        return await self.tx.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.interaction_token.is_not(None))
            .values(interaction_token=None)
        )
