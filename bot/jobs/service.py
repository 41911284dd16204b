"""`JobService`: every job this process runs, from `/imagine` or a button to the last edit.

    defer (ephemeral) → admission (checks, reservation, engine) → private progress message
    → `JobRun` (progress, delivery, final ledger state)

It keeps the registry of runs, answers the job buttons (Upscale, Vary, Reroll, Delete,
Cancel: the requester or a moderator of the job's own server only; an Upscale or Vary is a
new image-to-image job from the chosen image, kept full size by `ImageStore`), runs again
at start-up the jobs a previous process left unfinished, and on shutdown leaves unfinished
jobs to the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import discord

from engine import (
    EngineError,
    ImageRequest,
    Job,
    Parameters,
    upscale_request,
    variation_request,
)

from ..errors import NotAllowed, ShuttingDown, UnknownJob
from ..images.grid import GRID_IMAGES
from ..images.store import png_to_rgb
from ..ledger import JobKind, JobRecord, JobStatus, LedgerError, give_up, plan_recovery
from ..presentation import render
from ..presentation.buttons import Action, label_of, offered, progress_view
from ..services import JobRef, Services
from ..services.options import ImagineOptions
from ..surface.checks import is_moderator
from ..timing.limits import TOKEN_USABLE_FOR
from .admission import Admission, Admitted
from .convert import Origin, reroll_options, resumed_request, source_of
from .delivery import find_posted, persist, result_images, result_job
from .pricing import refund
from .run import PROGRESS_INTERVAL, JobRun, channel_target, is_nsfw
from .targets import InteractionTarget, Target

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["JobService", "origin_of"]

log = logging.getLogger(__name__)

#: How long a shutdown waits for results being posted right now.
SHUTDOWN_GRACE = 10.0
#: How long a button press on a result being recorded waits for the ledger.
DELIVERY_RECORD_WAIT = 30.0
#: How long a shutdown waits to tell a user that their job will resume after the restart.
SHUTDOWN_NOTE = 5.0


def origin_of(interaction: discord.Interaction[Any]) -> Origin:
    return Origin(
        guild_id=interaction.guild_id or 0,
        channel_id=interaction.channel_id or 0,
        parent_channel_id=getattr(interaction.channel, "parent_id", None),
        user_id=interaction.user.id,
        application_id=interaction.application_id,
        interaction_id=interaction.id,
        token=interaction.token,
    )


def _on_its_message(interaction: discord.Interaction[Any], message_id: int | None) -> bool:
    """Whether a button was pressed on the job's own message (None: not known, so any).

    A button's id names a job, but it acts on the message it is on: a forged id must not let
    someone act on another member's message through their own job.
    """
    clicked = interaction.message.id if interaction.message is not None else None
    return message_id is None or clicked == message_id


def _offers(record: JobRecord, action: Action) -> None:
    """Refuse a press for an action the job's result does not offer (its custom id was
    forged onto the message): what runs, and what it costs, follows the job's kind."""
    kind = record.request.kind
    if action not in offered(kind):
        raise NotAllowed(f"Job #{record.id} is an {kind}: it offers no {label_of(action)}.")


class JobService:
    """Owns every job this process runs (the `/imagine` cog and the buttons call it)."""

    def __init__(self, services: Services, *, progress_interval: float = PROGRESS_INTERVAL) -> None:
        self.services = services
        self.admission = Admission(services)
        self.progress_interval = progress_interval
        self.accepting = True
        self._runs: dict[int, tuple[JobRun, asyncio.Task[None]]] = {}
        self._admitting: set[asyncio.Task[Any]] = set()
        # Jobs in the engine whose run is not registered yet (their progress message is being
        # posted): a Cancel pressed in that window must reach the engine job, not only the
        # ledger, or the image is made and posted after the refund.
        self._submitted: dict[int, tuple[JobRecord, Job]] = {}

    @property
    def runs(self) -> dict[int, JobRun]:
        return {job_id: run for job_id, (run, _task) in self._runs.items()}

    # -- asking for images ------------------------------------------------------------------

    async def imagine(
        self,
        interaction: discord.Interaction[Any],
        options: ImagineOptions,
        *,
        reroll_of: int | None = None,
        picture: Image | None = None,
    ) -> None:
        """Answer `/imagine` (or a Reroll press): refuse privately, or queue and follow.
        A reroll of an image-to-image job starts from the same `picture`."""
        async with self._admitting_now():
            # Answer within Discord's 3 s first; everything after may take its time.
            if not interaction.response.is_done():  # a Reroll press has answered already
                await interaction.response.defer(ephemeral=True, thinking=True)
            admitted = await self.admission.admit(
                origin_of(interaction), options, reroll_of=reroll_of, picture=picture
            )
            await self._follow(interaction, admitted)

    async def _derived(
        self,
        interaction: discord.Interaction[Any],
        request: ImageRequest,
        *,
        kind: JobKind,
        source: JobRecord,
        index: int,
    ) -> None:
        """Queue an upscale or variation (the press was answered already) and follow it."""
        async with self._admitting_now():
            admitted = await self.admission.admit_derived(
                origin_of(interaction), request, kind=kind, source=source, index=index
            )
            await self._follow(interaction, admitted)

    @contextlib.asynccontextmanager
    async def _admitting_now(self) -> AsyncIterator[None]:
        """Admit only while accepting, and let a shutdown wait for this admission, so no
        job slips past it."""
        if not self.accepting:
            raise ShuttingDown()
        admitting = asyncio.current_task()
        if admitting is not None:
            self._admitting.add(admitting)
        try:
            yield
        finally:
            self._admitting.discard(admitting)  # type: ignore[arg-type]

    async def _follow(self, interaction: discord.Interaction[Any], admitted: Admitted) -> None:
        """Post the progress message of an admitted job and start its run."""
        record, engine_job = admitted.record, admitted.engine_job
        # From here the job runs whatever happens to its first message.
        self._submitted[record.id] = (record, engine_job)
        try:
            target, shown = await self._progress_message(interaction, record, engine_job)
        finally:
            self._submitted.pop(record.id, None)
        run = JobRun(
            self.services,
            record,
            engine_job,
            target,
            nsfw=is_nsfw(interaction.channel),
            warnings=admitted.warnings,
            progress_interval=self.progress_interval,
            shown=shown,
        )
        self._start(run)

    async def _progress_message(
        self, interaction: discord.Interaction[Any], record: JobRecord, engine_job: Job
    ) -> tuple[Target, str]:
        """Post the private progress message; where the job's messages go from now on, and
        the text it shows."""
        services = self.services
        text = render.progress_text(record.id, engine_job.progress)
        try:
            first = await interaction.followup.send(
                text,
                view=progress_view(JobRef.of(record)),
                ephemeral=True,
                wait=True,
            )
        except discord.HTTPException as exc:
            log.warning("job %d: no progress message (%s); posting to the channel", record.id, exc)
            return channel_target(services, record), ""
        services.clock.observe(first.created_at)
        try:
            await services.ledger.set_message(record.id, first.id)
        except LedgerError as exc:  # only a restart would miss it: it edits no progress
            log.warning("job %d: could not store the progress message: %s", record.id, exc)
        return InteractionTarget.for_job(services, record, message_id=first.id), text

    # -- buttons ----------------------------------------------------------------------------

    async def reroll(self, interaction: discord.Interaction[Any], job: JobRef) -> None:
        """Same options as `job`, a new seed: its requester or a moderator only (a reroll is
        charged to whoever pressed the button)."""
        # The database may be slow under load: answer Discord first.
        await interaction.response.defer(ephemeral=True, thinking=True)
        record = await self._known(interaction, job)
        if not self._may_manage(interaction, record):
            raise NotAllowed(
                "Only the person who asked for these images, or a moderator, can reroll them."
            )
        _offers(record, Action.REROLL)
        picture = None
        if record.request.strength is not None:
            picture = await asyncio.to_thread(self.services.images.load_input, job)
            if picture is None:
                raise NotAllowed(self._gone(f"The picture job #{record.id} started from"))
        options = reroll_options(record.request)
        await self.imagine(interaction, options, reroll_of=record.id, picture=picture)

    async def upscale(self, interaction: discord.Interaction[Any], job: JobRef, index: int) -> None:
        """Image `index` of `job` at twice its size (hires fix), charged to the presser."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        record, params, image = await self._chosen(interaction, job, index, Action.UPSCALE)
        request = upscale_request(
            params,
            image,
            self.services.engine.limits,
            user=origin_of(interaction).fairness_key,
            origin=f"job {record.id}, image {index + 1}",
            models=self.services.engine.model_names,
        )
        await self._derived(interaction, request, kind=JobKind.UPSCALE, source=record, index=index)

    async def vary(
        self, interaction: discord.Interaction[Any], job: JobRef, index: int, *, strong: bool
    ) -> None:
        """New images from image `index` of `job` (up to four, as a grid), charged to the
        presser: subtle or strong, at the configured strengths. Variations of an upscale are
        made at the model's native size, as `/imagine` makes them (see `variation_request`)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        action = Action.VARY_STRONG if strong else Action.VARY_SUBTLE
        record, params, image = await self._chosen(interaction, job, index, action)
        settings = self.services.config.images
        limits = self.services.engine.limits
        request = variation_request(
            params,
            image,
            limits,
            strength=settings.strong_variation if strong else settings.subtle_variation,
            count=min(GRID_IMAGES, limits.max_count),
            user=origin_of(interaction).fairness_key,
            origin=f"job {record.id}, image {index + 1}",
            models=self.services.engine.model_names,
            native=record.request.kind is JobKind.UPSCALE,
        )
        await self._derived(
            interaction, request, kind=JobKind.VARIATION, source=record, index=index
        )

    async def _chosen(
        self, interaction: discord.Interaction[Any], job: JobRef, index: int, action: Action
    ) -> tuple[JobRecord, Parameters, Image]:
        """The job, parameters and full-size picture of image `index` a button names; only
        its requester or a moderator, on the job's own message, for an action its result
        offers, while the image is kept. The parameters are the ledger's (`source_of`); the
        kept PNG gives only the picture."""
        record = await self._known(interaction, job)
        if not _on_its_message(interaction, record.message_id):
            raise NotAllowed(f"This button does not belong to job #{job.id}.")
        verb = "upscale" if action is Action.UPSCALE else "vary"
        if not self._may_manage(interaction, record):
            raise NotAllowed(
                f"Only the person who asked for these images, or a moderator, can {verb} them."
            )
        _offers(record, action)
        png = await asyncio.to_thread(self.services.images.load_output, job, index)
        if png is None and record.unkept:
            raise NotAllowed(
                f"The bot could not keep image {index + 1} of job #{job.id} when it was made "
                f"({record.unkept}), so it cannot start from it."
            )
        if png is None:
            raise NotAllowed(self._gone(f"Image {index + 1} of job #{job.id}"))
        return record, source_of(record.request, index), await asyncio.to_thread(png_to_rgb, png)

    async def _known(self, interaction: discord.Interaction[Any], job: JobRef) -> JobRecord:
        """The job a button names, in the presser's server; else `UnknownJob`."""
        await self._recorded(job.id)
        record = await self.services.ledger.get_job(job.id)
        if not job.names(record) or record.request.guild_id != (interaction.guild_id or 0):
            raise UnknownJob()
        return record

    async def _recorded(self, job_id: int) -> None:
        """Wait until a result this process is posting is in the ledger: a press on a result
        that appeared a moment ago must find its message id there, not the progress message's."""
        running = self._runs.get(job_id)
        if running is not None and running[0].delivering:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(running[0].recorded.wait(), DELIVERY_RECORD_WAIT)

    def _gone(self, what: str) -> str:
        days = self.services.config.images.keep_days
        return f"{what} is no longer kept (the bot keeps images for {days} days)."

    async def delete(self, interaction: discord.Interaction[Any], job: JobRef) -> None:
        """Delete the result message the button is on: its requester or a moderator only."""
        await interaction.response.defer()  # acknowledges the click before the database
        await self._recorded(job.id)
        record = await self.services.ledger.get_job(job.id)
        if not job.names(record) or not _on_its_message(interaction, record.message_id):
            # A forged id, or a job of a reset database: the message is not this job's result.
            record = None  # so only a moderator may delete it
        if not self._may_manage(interaction, record):
            raise NotAllowed(
                "Only the person who asked for these images, or a moderator, can delete them."
            )
        await interaction.delete_original_response()
        log.info("job %d: result deleted by %s", job.id, interaction.user.id)

    async def cancel(self, interaction: discord.Interaction[Any], job: JobRef) -> None:
        """Stop a queued or running job: its requester or a moderator only.

        Jobs this process runs are answered from memory (no database on the way to Discord's
        3 s limit); only jobs it does not run are cancelled through the ledger.
        """
        job_id = job.id
        running = self._runs.get(job_id)
        known = (
            (running[0].record, running[0].engine_job)
            if running is not None
            else self._submitted.get(job_id)
        )
        if known is not None and not job.names(known[0]):
            raise UnknownJob()
        not_yours = "Only the person who asked for this job, or a moderator, can cancel it."
        if known is not None:
            record, engine_job = known
            progress = running[0].target.message_id if running is not None else None
            if not _on_its_message(interaction, progress):
                raise NotAllowed(f"This button does not belong to job #{job_id}.")
            if not self._may_manage(interaction, record):
                raise NotAllowed(not_yours)
            if engine_job.cancel():  # the job's own run records it and refunds
                await interaction.response.edit_message(
                    content=f"Cancelling job #{job_id}…", view=None, attachments=[]
                )
                return
            raise NotAllowed(f"Job #{job_id} has already finished.")
        await interaction.response.defer()
        ledger = self.services.ledger
        found = await ledger.get_job(job_id)
        if found is None or not job.names(found):
            raise UnknownJob()
        if not _on_its_message(interaction, found.message_id):
            raise NotAllowed(f"This button does not belong to job #{job_id}.")
        if not self._may_manage(interaction, found):
            raise NotAllowed(not_yours)
        if found.active and await ledger.mark_cancelled(job_id):
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
        if job is not None and interaction.user.id == job.request.user_id:
            return True
        same_guild = job is None or job.request.guild_id == (interaction.guild_id or 0)
        role_ids = self.services.config.discord.moderator_role_ids
        return same_guild and is_moderator(interaction, role_ids)

    # -- restarts ---------------------------------------------------------------------------

    async def recover(self) -> int:
        """Run again the jobs a previous process left unfinished; returns how many.

        A job's interaction token is still used when, on the bot's estimate of Discord's clock,
        both its interaction and its reservation are young enough (`discord_limits`).
        """
        services = self.services
        clock = services.clock

        def token_usable(job: JobRecord) -> bool:
            young = clock.now() - job.queued_at < TOKEN_USABLE_FOR
            return young and clock.token_usable(job.request.interaction_id)

        plan = await plan_recovery(services.ledger, token_usable, services.config.discord.shards)
        reconciled = 0
        for record in plan:
            if record.delivery_started_at is not None and await self._reconcile(record):
                reconciled += 1
            elif record.request.interaction_token is not None and record in plan.requeue:
                target = InteractionTarget.for_job(services, record, message_id=record.message_id)
                await self._resume(record, target)
            else:
                await self._resume(record, channel_target(services, record))
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

    async def _reconcile(self, record: JobRecord) -> bool:
        """A job that died while delivering: if its result is in the channel, record it there
        and then (True) instead of posting it again. A channel the bot cannot read back is
        posted to again, with a warning: a result is never dropped on a guess."""
        services = self.services
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

    async def _resume(self, record: JobRecord, target: Target) -> None:
        picture = None
        if record.request.strength is not None:  # image-to-image: the picture it started from
            try:
                picture = await asyncio.to_thread(
                    self.services.images.load_input, JobRef.of(record)
                )
            except OSError as exc:
                log.warning("job %d: cannot read its picture: %s", record.id, exc)
            if picture is None:
                reason = "could not resume after a restart: the picture it started from is gone"
                await give_up(self.services.ledger, record.id, reason)
                return
        try:
            checked = await self.services.engine.check(resumed_request(record.request, picture))
            engine_job = self.services.engine.submit(checked, job_id=str(record.id))
        except EngineError as exc:
            log.warning("job %d: cannot resume after a restart: %s", record.id, exc)
            reason = f"could not resume after a restart: {exc}"
            await give_up(self.services.ledger, record.id, reason)
            return
        run = JobRun(
            self.services,
            record,
            engine_job,
            target,
            nsfw=None,
            resumed=True,
            progress_interval=self.progress_interval,
        )
        self._start(run)

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
        paused = [run for run, task in runs if not run.delivering]
        for run, task in runs:
            if not run.delivering:
                task.cancel()
            run.engine_job.cancel()  # frees the worker sooner; the ledger keeps the job
        if runs:
            await asyncio.wait([task for _run, task in runs], timeout=SHUTDOWN_GRACE)
        restarting = "The bot is restarting; job #{} will resume when it is back."
        notes = [run.show(restarting.format(run.id), must=True) for run in paused]
        if notes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*notes, return_exceptions=True), SHUTDOWN_NOTE
                )

    def _start(self, run: JobRun) -> None:
        task = asyncio.create_task(run.run(), name=f"imagine-job-{run.id}")
        self._runs[run.id] = (run, task)
        task.add_done_callback(lambda _: self._runs.pop(run.id, None))
