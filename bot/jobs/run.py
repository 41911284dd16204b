"""The run of one job: progress → delivery → its final ledger state.

    follow the engine job (queue position, steps, previews; edits at most every 2 s, paced
    per channel) → post the result → mark it done

Every path ends in exactly one ledger state: `done` (result posted once), `failed` or
`cancelled` (images given back). Posting follows `delivery.py`: the start of the delivery is
recorded first, a Discord outage is waited out, and a crash before "done" is recorded is
reconciled at the next start instead of posting again. A bot shutdown leaves the job
`queued`/`running` in the ledger on purpose: the next start runs it again
(`recovery.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import time
from collections.abc import Callable
from datetime import datetime

import discord

from engine import (
    Cancelled,
    EngineError,
    GenerationResult,
    InvalidRequest,
    Job,
    JobState,
    upscaled_size,
)
from engine import ShuttingDown as EngineShuttingDown

from ..errors import describe
from ..images.grid import GRID_IMAGES, grid_png
from ..images.store import why_not_written
from ..ledger import JobRecord, JobRef, JobStatus, give_up
from ..presentation import render
from ..presentation.buttons import progress_view, result_view
from ..services import Services
from .admission import edit_models
from .delivery import (
    DELIVERY_PATIENCE,
    GRID,
    RETRY_FIRST,
    RETRY_MAX,
    find_posted,
    is_transient,
    persist,
    result_filename,
)
from .pricing import delivered_price, fix_units, refund
from .targets import (
    CannotPost,
    ChannelTarget,
    InteractionTarget,
    ResultPost,
    Target,
    TokenGone,
    wait_for_cache,
)

__all__ = ["PROGRESS_INTERVAL", "JobRun", "channel_target", "is_nsfw"]

log = logging.getLogger(__name__)

#: Seconds between progress edits of one job (Discord allows about 5 edits per 5 s).
PROGRESS_INTERVAL = 2.0


def is_nsfw(channel: object) -> bool:
    """NSFW flag of a channel (threads follow their parent); unknown channels are not."""
    flag: Callable[[], bool] | None = getattr(channel, "is_nsfw", None)
    return bool(flag()) if flag is not None else False


def channel_target(services: Services, record: JobRecord) -> ChannelTarget:
    asked = record.request
    return ChannelTarget(services, channel_id=asked.channel_id, guild_id=asked.guild_id)


def _jump_url(job: JobRecord, message_id: int) -> str:
    guild = job.request.guild_id or "@me"
    return f"https://discord.com/channels/{guild}/{job.request.channel_id}/{message_id}"


class JobRun:
    """One job this process runs: its engine handle, where its messages go, and its task."""

    def __init__(
        self,
        services: Services,
        record: JobRecord,
        engine_job: Job,
        target: Target,
        *,
        nsfw: bool | None,  # None: look the channel up when the result is ready
        resumed: bool = False,
        warnings: tuple[str, ...] = (),
        progress_interval: float = PROGRESS_INTERVAL,
        shown: str = "",
    ) -> None:
        self.services = services
        self.record = record
        self.engine_job = engine_job
        self.target = target
        self.nsfw = nsfw
        self.resumed = resumed
        self.warnings = warnings
        self.progress_interval = progress_interval
        self.delivering = False  # the result is being posted: a shutdown lets it finish
        # Set once the ledger holds the job's end (its result message, for a delivery): a
        # button pressed on a result posted a moment ago waits for it (`JobService`).
        self.recorded = asyncio.Event()
        self._said_no_progress = False
        # What the progress message says now: the text it was posted with. Not the job's
        # state when the run starts, which may be ahead of it: then the next edit would be
        # skipped as "unchanged", and a job parked on its first step would never show it.
        self._shown = shown

    @property
    def id(self) -> int:
        return self.record.id

    @functools.cached_property
    def progress_view(self) -> discord.ui.View:
        """The progress message's Cancel button, made once: a view costs more to build than
        an edit that the channel's budget skips, and a long queue asks for many."""
        return progress_view(JobRef.of(self.record))

    async def run(self) -> None:
        """Follow the job to its end; never raises (errors end the job as failed)."""
        try:
            await self._run()
        finally:
            self.recorded.set()

    async def _run(self) -> None:
        ledger = self.services.ledger
        try:
            if self.resumed:
                text = render.progress_text(self.id, self.engine_job.progress, resumed=True)
                if await self.show(text, must=True):
                    self._shown = text
            try:
                result = await self._follow()
            except EngineShuttingDown:
                return  # the engine stops with the bot: the ledger keeps the job for a restart
            except Cancelled:
                changed = await ledger.mark_cancelled(self.id)
                log.info("job %d: cancelled, its images given back", self.id)  # once recorded
                self._ended(JobStatus.CANCELLED, changed)
                await self.tell(f"Job #{self.id} was cancelled; its images were given back.")
                return
            except EngineError as exc:
                self._ended(JobStatus.FAILED, await ledger.mark_failed(self.id, str(exc)))
                await self.tell(
                    f"Job #{self.id} failed: {describe(exc).text} Its images were given back."
                )
                return
            await self._deliver(result)
        except Exception as exc:
            message = describe(exc)
            log.error("job %d: error %s", self.id, message.error_id, exc_info=exc)
            with contextlib.suppress(Exception):
                if await ledger.mark_failed(self.id, f"{type(exc).__name__}: {exc}"):
                    self._ended(JobStatus.FAILED, True)
                    await self.tell(
                        f"Job #{self.id} failed: {message.text} Its images were given back."
                    )

    def _ended(self, status: JobStatus, changed: bool) -> None:
        """Count a final status this run set (False: another path had ended the job)."""
        if changed:
            self.services.metrics.jobs.labels(status=str(status)).inc()

    async def _follow(self) -> GenerationResult:
        """Show queue position and steps until the engine is done; return its result."""
        job = self.engine_job
        result = asyncio.ensure_future(job.result())
        marked_running = False
        try:
            while True:
                done, _ = await asyncio.wait({result}, timeout=self.progress_interval)
                progress = job.progress
                # Started; not a job failed in the queue (a shutdown fails every queued
                # job at once: recording each as running would be a write per job).
                started = job.started_at is not None or progress.state is JobState.DONE
                if started and not marked_running:
                    marked_running = True
                    waited = (job.started_at or job.submitted_at) - job.submitted_at
                    log.info("job %d: running after %.1f s in the queue", self.id, waited)
                    began = time.monotonic()
                    await self.services.ledger.mark_running(self.id)
                    if time.monotonic() - began > 1.0:  # a slow database stalls progress
                        log.warning(
                            "job %d: recording that it runs took %.1f s",
                            self.id,
                            time.monotonic() - began,
                        )
                if done:
                    return result.result()
                if progress.state is JobState.RUNNING:
                    job.request_preview()  # shown by the next edit
                text = render.progress_text(self.id, progress, resumed=self.resumed)
                if text != self._shown and await self.show(text, preview=progress.preview):
                    self._shown = text
        finally:
            if not result.done():
                result.cancel()  # only our wait: the engine job itself is untouched

    async def show(self, text: str, *, preview: bytes | None = None, must: bool = False) -> bool:
        """Edit the progress message (keeps the Cancel button); False if skipped or gone."""
        if not self.target.interactive and not self._said_no_progress:
            self._said_no_progress = True  # once: why this job's progress stays unseen
            log.info("job %d: no progress edits (token expired or message gone)", self.id)
        try:
            return await self.target.progress(
                text, preview=preview, view=self.progress_view, must=must
            )
        except TokenGone:
            log.info("job %d: interaction token gone; the result will go to the channel", self.id)
        except discord.HTTPException as exc:
            log.warning("job %d: progress edit failed: %s", self.id, exc)
        return False

    async def tell(self, text: str) -> None:
        """The job's last word when there is no result: in the progress message while the
        token lives and the message is there, else in the channel, mentioning the requester
        (a user who dismissed the progress message is still told)."""
        target = self.target
        if isinstance(target, InteractionTarget) and target.usable:
            with contextlib.suppress(TokenGone, discord.HTTPException):
                if await target.progress(text, preview=None, view=None, must=True):
                    return
        with contextlib.suppress(CannotPost, discord.HTTPException):
            mention = self.record.request.user_id
            await channel_target(self.services, self.record).say(text, mention=mention)

    async def _nsfw(self) -> bool:
        if self.nsfw is not None:
            return self.nsfw
        await wait_for_cache(self.services)  # resumed at start-up: the cache may be empty
        return is_nsfw(self.services.channels.get_channel(self.record.request.channel_id))

    async def _post_once(self, post: ResultPost, since: datetime) -> discord.Message | None:
        """Post the result through the job's target, else the channel; None if the bot may
        not post there. Through a Discord outage (5xx, network) it tries again for up to
        `DELIVERY_PATIENCE`, and after a failed attempt it first looks for the post, since a
        request that failed may still have posted (see `delivery.py`)."""
        targets: list[Target] = [self.target]
        if not isinstance(self.target, ChannelTarget):
            targets.append(channel_target(self.services, self.record))
        loop = asyncio.get_running_loop()
        patience_ends = loop.time() + DELIVERY_PATIENCE
        delay = RETRY_FIRST
        maybe_posted = False
        while targets:
            try:
                if maybe_posted:
                    found = await find_posted(self.services, self.record, since)
                    if found is not None:
                        log.info("job %d: found its result already posted", self.id)
                        return found
                return await targets[0].post(post)
            except TokenGone:
                log.info("job %d: token gone, posting to the channel instead", self.id)
                targets.pop(0)
            except CannotPost as exc:
                log.warning("job %d: cannot post the result (%s); images given back", self.id, exc)
                return None
            except Exception as exc:
                if not is_transient(exc) or loop.time() + delay > patience_ends:
                    raise
                maybe_posted = True
                log.warning(
                    "job %d: Discord did not take the result (%s); trying again in %.0f s",
                    self.id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        return None

    async def _deliver(self, result: GenerationResult) -> None:
        services, record, asked = self.services, self.record, self.record.request
        ledger = services.ledger
        rules = await services.rules.moderation(asked.guild_id)
        verdict = rules.review(result.images, nsfw_channel=await self._nsfw())
        # One rule for every image made but not posted (withheld by moderation, or left out
        # by the engine as NaN): given back by `pricing.refund`; none posted fails the job,
        # which gives back all.
        if verdict.nothing_to_post:
            changed = await ledger.mark_failed(
                self.id, "every image was flagged by the safety checker"
            )
            self._ended(JobStatus.FAILED, changed)
            await self.tell(
                f"The safety checker flagged every image of job #{self.id}, so none are posted "
                "here (this channel is not NSFW). Your images were given back."
            )
            return
        self.delivering = True
        ref = JobRef.of(record)
        posted = [image for image, _spoiler in verdict.post]
        unkept = None
        try:  # full size, for Upscale and Vary (a grid posts them scaled down)
            await asyncio.to_thread(services.images.save_outputs, ref, posted)
        except OSError as exc:  # still delivered; the message and later presses say why
            log.warning("job %d: cannot keep its images for Upscale/Vary: %s", self.id, exc)
            unkept = why_not_written(exc)
        warnings = self.warnings
        unfixed = [image.index + 1 for image in posted if asked.fix and not image.fixed]
        if unfixed:
            what = " or ".join(asked.fix.split(","))
            where = "the image" if len(posted) == 1 else f"image {', '.join(map(str, unfixed))}"
            warnings += (
                f"no {what} were found in {where}, so it is as it was made; "
                "its fix was not charged.",
            )
        if unkept is not None:
            these, them = ("this image", "it") if len(posted) == 1 else ("these images", "them")
            warnings += (
                f"the bot could not keep {these} at full size ({unkept}), so Upscale and Vary "
                f"cannot start from {them}.",
            )
        embed = render.result_embed(record, result, verdict)
        content = render.result_content(
            asked.user_id, len(verdict.post), verdict.withheld, warnings, result.failed
        )
        grid = None
        if len(posted) == GRID_IMAGES and not any(spoiler for _image, spoiler in verdict.post):
            grid = await asyncio.to_thread(grid_png, posted)

        def files() -> list[discord.File]:
            if grid is not None:
                return [discord.File(io.BytesIO(grid), filename=result_filename(ref, GRID))]
            return [
                discord.File(
                    io.BytesIO(image.png),
                    filename=result_filename(ref, image.seed),
                    spoiler=spoiler,
                )
                for image, spoiler in verdict.post
            ]

        # No Upscale on images already at the size cap (it would be a same-size re-render).
        upscalable = asked.width > 0 < asked.height and bool(
            upscaled_size(asked.width, asked.height, services.engine.limits)
        )
        engine = services.engine
        try:  # Zoom Out, Pan, Vary (Region) and Fix faces where the model inpaints
            canvas = engine.profile_of(asked.model or None).inpaint
        except InvalidRequest:  # a model no longer configured
            canvas = False
        view = result_view(
            ref,
            [image.index for image in posted],
            kind=asked.kind,
            upscalable=upscalable,
            canvas=canvas,
            region=bool(engine.config.region_model),
            gan=bool(engine.config.upscale_model),
            editable=bool(edit_models(services.engine)),
            fix=bool(engine.config.fix_detector),
            hands=bool(engine.config.fix_hands_detector),
            describable=bool(engine.config.describe.styles),
        )
        post = ResultPost(content, embed, files, view, mention=asked.user_id)
        charge = None  # a fix's final price: each image's fix only where it found something
        if asked.fix:
            fix = fix_units(engine, asked.model, asked.width, asked.height)
            charge = delivered_price(record, posted, services.config.images, fix)
        await persist(
            "the start of its delivery",
            self.id,
            lambda: ledger.start_delivery(self.id, unkept=unkept, charge=charge),
        )
        since = discord.utils.utcnow()  # once recorded (that may take long): no post before it
        message = await self._post_once(post, since)
        if message is None:
            gave_up = await persist("its refund", self.id, lambda: give_up(ledger, self.id))
            self._ended(JobStatus.FAILED, gave_up)
            return
        done = await persist(
            "its delivery", self.id, lambda: ledger.mark_done(self.id, message_id=message.id)
        )
        if done:
            self._ended(JobStatus.DONE, True)
        else:
            log.warning("job %d: posted, but the ledger no longer had it active", self.id)
        services.metrics.images.inc(len(verdict.post))
        services.metrics.step_seconds.observe(result.run_s / max(1, result.request.steps or 1))
        given = refund(record, len(verdict.post), services.config.images)
        if given:  # some were withheld or NaN: the job keeps the price of what it posted
            await ledger.refund_images(self.id, given)
        log.info(
            "job %d: delivered %d image(s), message %d", self.id, len(verdict.post), message.id
        )
        self.recorded.set()  # and its price: a shutdown waits for this much, not the edit below
        with contextlib.suppress(TokenGone, discord.HTTPException):
            await self.target.progress(
                f"Job #{self.id} is done: {_jump_url(record, message.id)}",
                preview=None,
                view=None,
                must=True,
            )
