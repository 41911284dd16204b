"""Running a job, from the request to the delivered images, with the ledger kept in step.

    defer (ephemeral) → moderation checks → reserve quota → submit to the engine
    → progress edits (at most every 2 s, paced per channel) → post the result → mark done

Every path ends in exactly one ledger state: `done` (result posted), `failed` or
`cancelled` (images given back), or `refused` (never counted). The result is posted before
the job is marked done, so a crash in between can post it twice but never loses it, and any
failure to post gives the images back. A bot shutdown leaves jobs `queued`/`running` in the
ledger on purpose: `recover()` runs them again at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import discord

from engine import (
    Busy,
    Cancelled,
    EngineError,
    GenerationResult,
    ImageRequest,
    InvalidRequest,
    Job,
    JobState,
)
from engine import ShuttingDown as EngineShuttingDown

from . import render
from .buttons import progress_view, result_view
from .checks import is_moderator
from .errors import NotAllowed, Refusal, ShuttingDown, UnknownJob, describe
from .ledger import (
    JobRecord,
    JobRequest,
    LedgerError,
    RefusalReason,
    Reservation,
    give_up,
    plan_recovery,
)
from .moderation import Verdict
from .options import ImagineOptions
from .targets import (
    READY_TIMEOUT,
    CannotPost,
    ChannelTarget,
    InteractionTarget,
    Target,
    TokenGone,
)

if TYPE_CHECKING:
    from .client import ImagineBot

__all__ = ["JobService", "Run"]

log = logging.getLogger(__name__)

#: Seconds between progress edits of one job (Discord allows about 5 edits per 5 s).
PROGRESS_INTERVAL = 2.0
#: How long a shutdown waits for results being posted right now.
SHUTDOWN_GRACE = 10.0
#: How long a shutdown waits to tell a user that their job will resume after the restart.
SHUTDOWN_NOTE = 5.0


@dataclass(eq=False)
class Run:
    """One job this process is running: its engine handle and where its messages go."""

    record: JobRecord
    engine_job: Job
    target: Target
    nsfw: bool | None  # None: look the channel up when the result is ready
    resumed: bool = False
    delivering: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def id(self) -> int:
        return self.record.id


def _is_nsfw(channel: object) -> bool:
    """NSFW flag of a channel (threads follow their parent); unknown channels are not."""
    is_nsfw: Callable[[], bool] | None = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if is_nsfw is not None else False


def _jump_url(job: JobRecord, message_id: int) -> str:
    guild = job.guild_id or "@me"
    return f"https://discord.com/channels/{guild}/{job.channel_id}/{message_id}"


def _refusal_text(reservation: Reservation) -> Refusal:
    reason = reservation.reason
    if reason == RefusalReason.USER_BLOCKED:
        return Refusal(reason, "A moderator has blocked you from making images here.")
    if reason == RefusalReason.TOO_MANY_JOBS:
        return Refusal(
            reason,
            "You already have the most jobs allowed in the queue. "
            "Wait for one to finish (or cancel one), then try again.",
        )
    if reason == RefusalReason.QUOTA:
        limit = reservation.limit
        if reservation.retry_at is None:
            return Refusal(
                reason,
                f"That is more images than your whole allowance ({limit} per 24 hours).",
            )
        return Refusal(
            reason,
            f"You have used your {limit} images for the last 24 hours.",
            reservation.retry_at,
        )
    return Refusal(reason or RefusalReason.INVALID, "That request was refused.")


class JobService:
    """Owns every job this process runs (the cog and the buttons call it)."""

    def __init__(self, bot: ImagineBot, *, progress_interval: float = PROGRESS_INTERVAL) -> None:
        self.bot = bot
        self.progress_interval = progress_interval
        self.accepting = True
        self._runs: dict[int, Run] = {}
        self._admitting: set[asyncio.Task[Any]] = set()
        # Jobs in the engine whose Run is not registered yet (their progress message is being
        # posted): a Cancel pressed in that window must reach the engine job, not only the
        # ledger, or the image is made and posted after the refund.
        self._submitted: dict[int, tuple[JobRecord, Job]] = {}

    @property
    def runs(self) -> dict[int, Run]:
        return dict(self._runs)

    # -- asking for images ------------------------------------------------------------------

    async def imagine(
        self,
        interaction: discord.Interaction[Any],
        options: ImagineOptions,
        *,
        reroll_of: int | None = None,
    ) -> None:
        """Answer `/imagine` (or a Reroll press): refuse privately, or queue and follow."""
        if not self.accepting:
            raise ShuttingDown()
        admitting = asyncio.current_task()
        if admitting is not None:  # a shutdown waits for it, so no job slips past it
            self._admitting.add(admitting)
        try:
            await self._admit(interaction, options, reroll_of)
        finally:
            self._admitting.discard(admitting)  # type: ignore[arg-type]

    async def _admit(
        self,
        interaction: discord.Interaction[Any],
        options: ImagineOptions,
        reroll_of: int | None,
    ) -> None:
        # Answer within Discord's 3 s first; everything after may take its time.
        if not interaction.response.is_done():  # a Reroll press has answered already
            await interaction.response.defer(ephemeral=True, thinking=True)
        bot = self.bot
        guild_id = interaction.guild_id or 0
        channel_id = interaction.channel_id or 0
        user_id = interaction.user.id
        negative = bot.moderation.negative_prompt(options.negative)

        def ledger_request(request: ImageRequest) -> JobRequest:
            return JobRequest(
                guild_id=guild_id,
                channel_id=channel_id,
                user_id=user_id,
                application_id=interaction.application_id,
                interaction_id=interaction.id,
                interaction_token=interaction.token,
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                seed=request.seed if request.seed is not None else 0,
                model=bot.config.engine.model,
                scheduler=bot.config.engine.scheduler,
                steps=request.steps or 0,
                guidance=request.guidance if request.guidance is not None else 0.0,
                width=request.width or 0,
                height=request.height or 0,
                image_count=request.count,
                reroll_of=reroll_of,
            )

        asked = options.to_request(
            negative=negative,
            native=bot.engine.profile.native_size,
            limits=bot.engine.limits,
            user=f"{guild_id}:{user_id}",
        )
        # Before any other check: a flood costs one refusal row each. Reroll presses were
        # counted by the button (buttons.py).
        limited = bot.rate_limited(user_id) if reroll_of is None else None
        if limited is not None:
            await bot.ledger.record_refusal(ledger_request(asked), RefusalReason.RATE_LIMITED)
            raise limited
        parent_id = getattr(interaction.channel, "parent_id", None)
        if not bot.moderation.channel_allowed(channel_id, parent_id):
            await bot.ledger.record_refusal(ledger_request(asked), RefusalReason.CHANNEL)
            allowed = " ".join(f"<#{c}>" for c in bot.config.moderation.allowed_channel_ids)
            raise Refusal(RefusalReason.CHANNEL, f"Images can't be made here. Try {allowed}.")
        word = bot.moderation.blocked_word(options.prompt, options.negative)
        if word is not None:
            await bot.ledger.record_refusal(
                ledger_request(asked), RefusalReason.BLOCKED_WORD, f"blocked word {word!r}"
            )
            raise Refusal(
                RefusalReason.BLOCKED_WORD,
                f"Your prompt contains a word this server does not allow ({word!r}).",
            )
        try:
            request, warnings = bot.engine.prepare(asked)
        except InvalidRequest as exc:
            await bot.ledger.record_refusal(ledger_request(asked), RefusalReason.INVALID, str(exc))
            raise Refusal(RefusalReason.INVALID, str(exc)) from exc

        reservation = await bot.ledger.reserve(ledger_request(request))
        if not reservation.accepted:
            raise _refusal_text(reservation)
        record = reservation.job
        try:
            engine_job = bot.engine.submit(request, job_id=str(record.id))
        except Busy as exc:
            await bot.ledger.refuse(record.id, RefusalReason.QUEUE_FULL, str(exc))
            raise Refusal(
                RefusalReason.QUEUE_FULL,
                "The image queue is full right now. Try again in a minute; "
                "nothing was taken from your quota.",
            ) from exc
        except EngineError as exc:
            await bot.ledger.mark_failed(record.id, str(exc))
            raise

        # From here the job runs whatever happens to its first message.
        self._submitted[record.id] = (record, engine_job)
        try:
            await self._follow_up(interaction, record, engine_job, channel_id, warnings)
        finally:
            self._submitted.pop(record.id, None)

    async def _follow_up(
        self,
        interaction: discord.Interaction[Any],
        record: JobRecord,
        engine_job: Job,
        channel_id: int,
        warnings: tuple[str, ...],
    ) -> None:
        """Post the private progress message, then start following the engine job."""
        bot = self.bot
        target: Target = self._channel_target(record)
        try:
            first = await interaction.followup.send(
                render.progress_text(record.id, engine_job.progress),
                view=progress_view(record.id),
                ephemeral=True,
                wait=True,
            )
        except discord.HTTPException as exc:
            log.warning("job %d: no progress message (%s); posting to the channel", record.id, exc)
        else:
            bot.discord_clock.observe(first.created_at)
            target = InteractionTarget(
                bot,
                application_id=interaction.application_id,
                token=interaction.token,
                interaction_id=interaction.id,
                channel_id=channel_id,
                message_id=first.id,
            )
            try:
                await bot.ledger.set_message(record.id, first.id)
            except LedgerError as exc:  # only a restart would miss it: it edits no progress
                log.warning("job %d: could not store the progress message: %s", record.id, exc)
        self._start(Run(record, engine_job, target, _is_nsfw(interaction.channel)), warnings)

    async def reroll(self, interaction: discord.Interaction[Any], job_id: int) -> None:
        """Same options as job `job_id`, a new seed: its requester or a moderator only (a
        reroll is charged to whoever pressed the button)."""
        # The database may be slow under load: answer Discord first.
        await interaction.response.defer(ephemeral=True, thinking=True)
        record = await self.bot.ledger.get_job(job_id)
        if record is None or record.guild_id != (interaction.guild_id or 0):
            raise UnknownJob()
        if not self._may_manage(interaction, record):
            raise NotAllowed(
                "Only the person who asked for these images, or a moderator, can reroll them."
            )
        await self.imagine(interaction, ImagineOptions.reroll(record), reroll_of=record.id)

    async def delete(self, interaction: discord.Interaction[Any], job_id: int) -> None:
        """Delete the result message the button is on: its requester or a moderator only."""
        await interaction.response.defer()  # acknowledges the click before the database
        record = await self.bot.ledger.get_job(job_id)
        if not self._may_manage(interaction, record):
            raise NotAllowed(
                "Only the person who asked for these images, or a moderator, can delete them."
            )
        await interaction.delete_original_response()
        log.info("job %d: result deleted by %s", job_id, interaction.user.id)

    async def cancel(self, interaction: discord.Interaction[Any], job_id: int) -> None:
        """Stop a queued or running job: its requester or a moderator only.

        Jobs this process runs are answered from memory (no database on the way to Discord's
        3 s limit); only jobs it does not run are cancelled through the ledger.
        """
        run = self._runs.get(job_id)
        known = (run.record, run.engine_job) if run is not None else self._submitted.get(job_id)
        if known is not None:
            record, engine_job = known
            if not self._may_manage(interaction, record):
                raise NotAllowed(
                    "Only the person who asked for this job, or a moderator, can cancel it."
                )
            if engine_job.cancel():  # the job's own task records it and refunds
                await interaction.response.edit_message(
                    content=f"Cancelling job #{job_id}…", view=None, attachments=[]
                )
                return
            raise NotAllowed(f"Job #{job_id} has already finished.")
        await interaction.response.defer()
        found = await self.bot.ledger.get_job(job_id)
        if found is None:
            raise UnknownJob()
        if not self._may_manage(interaction, found):
            raise NotAllowed(
                "Only the person who asked for this job, or a moderator, can cancel it."
            )
        if found.active and await self.bot.ledger.mark_cancelled(job_id):
            # Not running here (it could not be resumed): nothing else will finish it.
            await interaction.edit_original_response(
                content=f"Job #{job_id} was cancelled; its images were given back.",
                view=None,
                attachments=[],
            )
            return
        raise NotAllowed(f"Job #{job_id} has already finished.")

    def _may_manage(self, interaction: discord.Interaction[Any], job: JobRecord | None) -> bool:
        """The job's requester, or a moderator of the job's own server (buttons can be forged,
        so a moderator elsewhere gets no say). Unknown jobs: moderators only."""
        if job is not None and interaction.user.id == job.user_id:
            return True
        same_guild = job is None or job.guild_id == (interaction.guild_id or 0)
        return same_guild and is_moderator(interaction, self.bot.config.discord.moderator_role_ids)

    # -- restarts ---------------------------------------------------------------------------

    async def recover(self) -> int:
        """Run again the jobs a previous process left unfinished; returns how many."""
        plan = await plan_recovery(self.bot.ledger)
        for record in plan.requeue:
            assert record.interaction_token is not None
            target: Target = InteractionTarget(
                self.bot,
                application_id=record.application_id,
                token=record.interaction_token,
                interaction_id=record.interaction_id,
                channel_id=record.channel_id,
                message_id=record.message_id,
            )
            await self._resume(record, target)
        for record in plan.post_to_channel:
            await self._resume(record, self._channel_target(record))
        if len(plan):
            log.info(
                "recovered %d job(s): %d answer their interaction, %d post to the channel",
                len(plan),
                len(plan.requeue),
                len(plan.post_to_channel),
            )
        return len(plan)

    async def _resume(self, record: JobRecord, target: Target) -> None:
        request = ImageRequest(
            prompt=record.prompt,
            negative_prompt=record.negative_prompt,
            seed=record.seed,
            steps=record.steps,
            guidance=record.guidance,
            width=record.width,
            height=record.height,
            count=record.image_count,
            user=f"{record.guild_id}:{record.user_id}",
        )
        try:
            engine_job = self.bot.engine.submit(request, job_id=str(record.id))
        except EngineError as exc:
            log.warning("job %d: cannot resume after a restart: %s", record.id, exc)
            await give_up(self.bot.ledger, record.id, f"could not resume after a restart: {exc}")
            return
        self._start(Run(record, engine_job, target, nsfw=None, resumed=True))

    # -- shutting down ----------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop taking work; leave unfinished jobs to the next start (see the module doc).

        Results being posted right now are let finish; every other job is stopped without
        touching the ledger, and its requester is told it will resume.
        """
        self.accepting = False
        if self._admitting:  # requests being queued right now: let them register their run
            await asyncio.wait(set(self._admitting), timeout=SHUTDOWN_GRACE)
        runs = list(self._runs.values())
        paused = [run for run in runs if not run.delivering]
        for run in paused:
            assert run.task is not None
            run.task.cancel()
        for run in runs:
            run.engine_job.cancel()  # frees the worker sooner; the ledger keeps the job
        tasks = [run.task for run in runs if run.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
        notes = [
            self._show(
                run,
                f"The bot is restarting; job #{run.id} will resume when it is back.",
                must=True,
            )
            for run in paused
        ]
        if notes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*notes, return_exceptions=True), SHUTDOWN_NOTE
                )

    # -- one job ----------------------------------------------------------------------------

    def _start(self, run: Run, warnings: tuple[str, ...] = ()) -> None:
        run.task = asyncio.create_task(self._run(run, warnings), name=f"imagine-job-{run.id}")
        self._runs[run.id] = run
        run.task.add_done_callback(lambda _: self._runs.pop(run.id, None))

    async def _run(self, run: Run, warnings: tuple[str, ...]) -> None:
        ledger = self.bot.ledger
        try:
            if run.resumed:
                text = render.progress_text(run.id, run.engine_job.progress, resumed=True)
                await self._show(run, text, must=True)
            try:
                result = await self._follow(run)
            except EngineShuttingDown:
                return  # the engine stops with the bot: the ledger keeps the job for a restart
            except Cancelled:
                await ledger.mark_cancelled(run.id)
                await self._tell(run, f"Job #{run.id} was cancelled; its images were given back.")
                return
            except EngineError as exc:
                await ledger.mark_failed(run.id, str(exc))
                await self._tell(
                    run, f"Job #{run.id} failed: {describe(exc).text} Its images were given back."
                )
                return
            await self._deliver(run, result, warnings)
        except Exception as exc:
            message = describe(exc)
            log.error("job %d: error %s", run.id, message.error_id, exc_info=exc)
            with contextlib.suppress(Exception):
                if await ledger.mark_failed(run.id, f"{type(exc).__name__}: {exc}"):
                    await self._tell(
                        run, f"Job #{run.id} failed: {message.text} Its images were given back."
                    )

    async def _follow(self, run: Run) -> GenerationResult:
        """Show queue position and steps until the engine is done; return its result."""
        job = run.engine_job
        result = asyncio.ensure_future(job.result())
        marked_running = False
        shown = render.progress_text(run.id, job.progress, resumed=run.resumed)
        try:
            while True:
                done, _ = await asyncio.wait({result}, timeout=self.progress_interval)
                progress = job.progress
                if progress.state is not JobState.QUEUED and not marked_running:
                    marked_running = True
                    await self.bot.ledger.mark_running(run.id)
                if done:
                    return result.result()
                if progress.state is JobState.RUNNING:
                    job.request_preview()  # shown by the next edit
                text = render.progress_text(run.id, progress, resumed=run.resumed)
                if text != shown and await self._show(run, text, preview=progress.preview):
                    shown = text
        finally:
            if not result.done():
                result.cancel()  # only our wait: the engine job itself is untouched

    async def _show(
        self, run: Run, text: str, *, preview: bytes | None = None, must: bool = False
    ) -> bool:
        """Edit the progress message (keeps the Cancel button); False if skipped or gone."""
        try:
            return await run.target.progress(
                text, preview=preview, view=progress_view(run.id), must=must
            )
        except TokenGone:
            log.info("job %d: interaction token gone; the result will go to the channel", run.id)
        except discord.HTTPException as exc:
            log.warning("job %d: progress edit failed: %s", run.id, exc)
        return False

    async def _tell(self, run: Run, text: str) -> None:
        """The job's last word when there is no result: in the progress message while the
        token lives and the message is there, else in the channel, mentioning the requester
        (a user who dismissed the progress message is still told)."""
        if isinstance(run.target, InteractionTarget) and run.target.usable:
            with contextlib.suppress(TokenGone, discord.HTTPException):
                if await run.target.progress(text, preview=None, view=None, must=True):
                    return
        with contextlib.suppress(CannotPost, discord.HTTPException):
            await self._channel_target(run.record).say(text, mention=run.record.user_id)

    def _channel_target(self, record: JobRecord) -> ChannelTarget:
        return ChannelTarget(self.bot, channel_id=record.channel_id, guild_id=record.guild_id)

    async def _nsfw(self, run: Run) -> bool:
        if run.nsfw is not None:
            return run.nsfw
        if not self.bot.is_ready():  # resumed at start-up: wait for the channel cache
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.bot.wait_until_ready(), READY_TIMEOUT)
        return _is_nsfw(self.bot.get_channel(run.record.channel_id))

    async def _deliver(self, run: Run, result: GenerationResult, warnings: tuple[str, ...]) -> None:
        ledger = self.bot.ledger
        verdict: Verdict = self.bot.moderation.review(
            result.images, nsfw_channel=await self._nsfw(run)
        )
        if verdict.nothing_to_post:
            await ledger.mark_failed(run.id, "every image was flagged by the safety checker")
            await self._tell(
                run,
                f"The safety checker flagged every image of job #{run.id}, so none are posted "
                "here (this channel is not NSFW). Your images were given back.",
            )
            return
        run.delivering = True
        embed = render.result_embed(run.record, result, verdict)
        content = render.result_content(
            run.record.user_id, len(verdict.post), verdict.withheld, warnings
        )

        def files() -> list[discord.File]:  # a File can be sent once: fresh ones per attempt
            return [
                discord.File(
                    io.BytesIO(image.png),
                    filename=f"imagine-{run.id}-{image.seed}.png",
                    spoiler=spoiler,
                )
                for image, spoiler in verdict.post
            ]

        targets: list[Target] = [run.target]
        if not isinstance(run.target, ChannelTarget):
            targets.append(self._channel_target(run.record))
        message: discord.Message | None = None
        for target in targets:
            try:
                message = await target.post(
                    content,
                    embed=embed,
                    files=files(),
                    view=result_view(run.id),
                    mention=run.record.user_id,
                )
                break
            except TokenGone:
                log.info("job %d: token gone, posting to the channel instead", run.id)
            except CannotPost as exc:
                log.warning("job %d: cannot post the result (%s); images given back", run.id, exc)
                await give_up(ledger, run.id)
                return
        if message is None:
            await give_up(ledger, run.id)
            return
        if not await ledger.mark_done(run.id, message_id=message.id):
            log.warning("job %d: posted, but the ledger no longer had it active", run.id)
        self.bot.metrics.images.inc(len(verdict.post))
        self.bot.metrics.step_seconds.observe(result.run_s / max(1, result.request.steps or 1))
        if verdict.withheld:
            await ledger.refund_images(run.id, verdict.withheld)
        log.info("job %d: delivered %d image(s), message %d", run.id, len(verdict.post), message.id)
        with contextlib.suppress(TokenGone, discord.HTTPException):
            await run.target.progress(
                f"Job #{run.id} is done: {_jump_url(run.record, message.id)}",
                preview=None,
                view=None,
                must=True,
            )
