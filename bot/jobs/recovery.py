"""`recover`: at start-up, run again the jobs a previous process left unfinished.

Each unfinished job of this process's shards is, by `ledger.plan_recovery`:

- *reconciled* when it died while delivering and its result is in the channel: recorded
  there and then, not posted again (`delivery.py` says how the channel is read back);
- *resumed* through its interaction token while, on the bot's estimate of Discord's clock,
  both its interaction and its reservation are young enough (`timing/limits.py`);
- else resumed into its channel, mentioning the requester.

A job that cannot run again (its picture is gone, the engine refuses it) is given up: its
images are given back.
"""

from __future__ import annotations

import asyncio
import logging

import discord

from engine import EngineError

from ..ledger import JobKind, JobRecord, JobRef, JobStatus, give_up, plan_recovery
from ..timing.limits import TOKEN_USABLE_FOR
from .convert import CANVAS_KINDS, resumed_request
from .delivery import find_posted, persist, result_images, result_job
from .gan import is_gan_alone, ready_job, upscaler_name
from .pricing import refund
from .run import JobRun, channel_target
from .service import JobService
from .targets import InteractionTarget, Target

__all__ = ["recover"]

log = logging.getLogger(__name__)


async def recover(jobs: JobService) -> int:
    """Run again the jobs a previous process left unfinished; returns how many.

    A job's interaction token is still used when, on the bot's estimate of Discord's clock,
    both its interaction and its reservation are young enough (`timing/limits.py`).
    """
    services = jobs.services
    clock = services.clock

    def token_usable(job: JobRecord) -> bool:
        young = clock.now() - job.queued_at < TOKEN_USABLE_FOR
        return young and clock.token_usable(job.request.interaction_id)

    plan = await plan_recovery(services.ledger, token_usable, services.config.discord.shards)
    reconciled = 0
    for record in plan:
        if record.delivery_started_at is not None and await _reconcile(jobs, record):
            reconciled += 1
        elif record.request.interaction_token is not None and record in plan.requeue:
            target = InteractionTarget.for_job(services, record, message_id=record.message_id)
            await _resume(jobs, record, target)
        else:
            await _resume(jobs, record, channel_target(services, record))
    if reconciled:
        log.info("recovered %d job(s) whose result was already posted", reconciled)
    if len(plan):
        log.info(
            "recovered %d job(s): %d answer their interaction, %d post to the channel",
            len(plan),
            len(plan.requeue),
            len(plan.post_to_channel),
        )
    return len(plan)


async def _reconcile(jobs: JobService, record: JobRecord) -> bool:
    """A job that died while delivering: if its result is in the channel, record it there
    and then (True) instead of posting it again. A channel the bot cannot read back is
    posted to again, with a warning: a result is never dropped on a guess."""
    services = jobs.services
    assert record.delivery_started_at is not None
    try:
        message = await find_posted(services, record, record.delivery_started_at)
    except (discord.HTTPException, OSError, TimeoutError) as exc:
        log.warning(
            "job %d: cannot read back channel %d (%s); posting its result again",
            record.id,
            record.request.channel_id,
            exc,
        )
        return False
    if message is None:
        return False
    ledger = services.ledger
    done = await persist(
        "its delivery", record.id, lambda: ledger.mark_done(record.id, message_id=message.id)
    )
    posted = sum(
        result_images(a.filename)
        for a in message.attachments
        if result_job(a.filename) == JobRef.of(record)
    )
    given = refund(record, posted, services.config.images)
    if done and given:  # moderation had withheld some of them
        await ledger.refund_images(record.id, given)
    if done:
        services.metrics.jobs.labels(status=str(JobStatus.DONE)).inc()
    log.info(
        "job %d: its result was already posted (message %d); recorded, not posted again",
        record.id,
        message.id,
    )
    return True


async def _resume(jobs: JobService, record: JobRecord, target: Target) -> None:
    services = jobs.services
    ref = JobRef.of(record)
    picture, references = None, ()
    if record.request.kind is JobKind.EDIT:  # an edit by instruction: the pictures it edits
        try:
            references = await asyncio.to_thread(services.images.load_references, ref)
        except OSError as exc:
            log.warning("job %d: cannot read its pictures: %s", record.id, exc)
        if not references:
            reason = "could not resume after a restart: the picture it edits is gone"
            await give_up(services.ledger, record.id, reason)
            return
    elif record.request.strength is not None:  # image-to-image: the picture it started from
        try:
            picture = await asyncio.to_thread(services.images.load_input, ref)
        except OSError as exc:
            log.warning("job %d: cannot read its picture: %s", record.id, exc)
        if picture is None:
            reason = "could not resume after a restart: the picture it started from is gone"
            await give_up(services.ledger, record.id, reason)
            return
    mask = None
    if record.request.kind in CANVAS_KINDS:  # inpainting: the mask and fields stored with it
        try:
            mask = await asyncio.to_thread(services.images.load_mask, JobRef.of(record))
        except OSError as exc:
            log.warning("job %d: cannot read its mask: %s", record.id, exc)
        if mask is None:
            reason = "could not resume after a restart: the mask it was made with is gone"
            await give_up(services.ledger, record.id, reason)
            return
    try:
        if is_gan_alone(record.request) and picture is not None:  # its picture is its image
            upscaler = upscaler_name(services.engine.config.upscale_model)
            request = resumed_request(record.request, picture)
            engine_job = ready_job(record.id, record.request, picture, request, upscaler=upscaler)
        else:
            checked = await services.engine.check(
                resumed_request(record.request, picture, mask, references)
            )
            engine_job = services.engine.submit(checked, job_id=str(record.id))
    except EngineError as exc:
        log.warning("job %d: cannot resume after a restart: %s", record.id, exc)
        reason = f"could not resume after a restart: {exc}"
        await give_up(services.ledger, record.id, reason)
        return
    run = JobRun(
        services,
        record,
        engine_job,
        target,
        nsfw=None,
        resumed=True,
        progress_interval=jobs.progress_interval,
    )
    jobs.start(run)
