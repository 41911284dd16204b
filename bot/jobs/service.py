"""`JobService`: every job this process runs, from `/imagine` or a button to the last edit.

    defer (ephemeral) → admission (checks, reservation, engine) → private progress message
    → `JobRun` (progress, delivery, final ledger state)

It keeps the registry of runs, admits new jobs (an `/imagine`, a Reroll, an Upscale or
Vary), and on shutdown leaves unfinished jobs to the next start. The job buttons' work is in
`actions.py` (`Actions`, what the Discord surface calls); the jobs a previous process left
unfinished are run again by `recovery.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import discord

from engine import ImageRequest, Job, JobState

from ..errors import ShuttingDown
from ..ledger import JobKind, JobRecord, JobRef, LedgerError
from ..presentation import render
from ..presentation.buttons import progress_view
from ..services import ImagineOptions, Services
from .admission import Admission, Admitted
from .convert import Origin
from .run import PROGRESS_INTERVAL, JobRun, channel_target, is_nsfw
from .targets import InteractionTarget, Target

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["JobService", "origin_of"]

log = logging.getLogger(__name__)

#: How long a shutdown waits for results being posted right now.
SHUTDOWN_GRACE = 10.0
#: How long a shutdown lets requests being queued right now finish before it cancels them:
#: under a burst hundreds wait for the ledger, and a stop must not wait for all of them.
ADMISSION_GRACE = 1.0
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


class JobService:
    """Owns every job this process runs (`Actions` and `recover` go through it)."""

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

    def run_of(self, job_id: int) -> JobRun | None:
        """The run of job `job_id`, if this process runs it."""
        running = self._runs.get(job_id)
        return running[0] if running is not None else None

    def submitted(self, job_id: int) -> tuple[JobRecord, Job] | None:
        """Job `job_id` in the engine while its progress message is being posted (no run yet)."""
        return self._submitted.get(job_id)

    async def recorded(self, job_id: int) -> None:
        """Wait until a result this process is posting is in the ledger: a press on a result
        that appeared a moment ago must find its message id there, not the progress message's."""
        run = self.run_of(job_id)
        if run is not None and run.delivering:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.recorded.wait(), DELIVERY_RECORD_WAIT)

    # -- asking for images ------------------------------------------------------------------

    async def imagine(
        self,
        interaction: discord.Interaction[Any],
        options: ImagineOptions,
        *,
        reroll_of: int | None = None,
        picture: Image | None = None,
        references: Sequence[Image] = (),
    ) -> None:
        """Answer `/imagine` or `/edit` (or a Reroll press): refuse privately, or queue and
        follow each job (one per variant of a prompt with {…} choices, each with its progress
        message). A reroll of an image-to-image job starts from the same `picture`, of an edit
        from the same `references`."""
        async with self._admitting_now():
            # The admission runs beside the answer ("thinking…", within Discord's 3 s): under
            # a burst each is many turns of the busy event loop, and "queued" waited for both.
            admitting = asyncio.create_task(
                self.admission.admit(
                    origin_of(interaction),
                    options,
                    reroll_of=reroll_of,
                    picture=picture,
                    references=references,
                ),
                name=f"imagine-admit-{interaction.id}",
            )
            try:
                if not interaction.response.is_done():  # a Reroll press has answered already
                    await interaction.response.defer(ephemeral=True, thinking=True)
            except BaseException as exc:
                await self._withdraw(admitting, exc)
                raise
            for one in await admitting:  # a job per variant of the prompt's {…} choices
                await self._follow(interaction, one)

    async def _withdraw(self, admitting: asyncio.Task[list[Admitted]], why: BaseException) -> None:
        """The interaction could not be answered (`why`): what `admitting` queued is cancelled
        and its images given back, as nobody would see it (a refusal was recorded already).
        A shutdown cancels the admission instead: the ledger's transaction is whole or not at
        all, and a job it queued is run at the next start."""
        if isinstance(why, asyncio.CancelledError):
            admitting.cancel()
            admitting.add_done_callback(lambda task: task.cancelled() or task.exception())
            return
        try:
            admitted = await admitting
        except Exception:  # refused or failed: nothing is queued
            return
        why_text = f"the command could not be answered: {why}"
        for one in admitted:
            one.engine_job.cancel()
            try:
                await self.services.ledger.mark_cancelled(one.record.id, why_text)
            except LedgerError as exc:  # left queued: the next start runs it
                log.warning("job %d: could not cancel it: %s", one.record.id, exc)
            else:
                log.info("job %d: cancelled, %s", one.record.id, why_text)

    async def derived(
        self,
        interaction: discord.Interaction[Any],
        request: ImageRequest,
        *,
        kind: JobKind,
        source: tuple[int, int] | None,
        reroll_of: int | None = None,
        gan_alone: bool = False,
    ) -> None:
        """Queue a request made from image `source` (job id, index) of an earlier job, or
        from a member's picture (None): an upscale, a variation, an edit, a canvas, or a
        reroll of one (the press was answered already), and follow it; `gan_alone`: Upscale
        (subtle)."""
        async with self._admitting_now():
            admitted = await self.admission.admit_derived(
                origin_of(interaction),
                request,
                kind=kind,
                source=source,
                reroll_of=reroll_of,
                gan_alone=gan_alone,
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
        except asyncio.CancelledError:  # a shutdown: the ledger keeps the job for the next start
            engine_job.cancel()
            raise
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
        self.start(run)

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

    def start(self, run: JobRun) -> None:
        """Run `run` as a task of its own, registered until it ends."""
        task = asyncio.create_task(run.run(), name=f"imagine-job-{run.id}")
        self._runs[run.id] = (run, task)
        task.add_done_callback(lambda _: self._runs.pop(run.id, None))

    # -- shutting down ----------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop taking work; leave unfinished jobs to the next start (see the module doc).

        Results being posted right now are let finish (until the ledger records them, for
        `SHUTDOWN_GRACE` at most); every other job is stopped without touching the ledger,
        and its requester is told it will resume while the channel's edit budget lasts
        (running jobs first): a deep queue adds no wait.
        """
        self.accepting = False
        await self._stop_admitting()
        runs = list(self._runs.values())
        delivering = [run for run, _task in runs if run.delivering]
        paused = [run for run, _task in runs if not run.delivering]
        # Told first: the requesters of the jobs being made (the queue's are told while the
        # channel's edit budget lasts; a stop never waits for it).
        paused.sort(key=lambda run: run.engine_job.progress.state is not JobState.RUNNING)
        for run, task in runs:
            if not run.delivering:
                task.cancel()
                run.engine_job.cancel()  # frees the worker sooner; the ledger keeps the job
        if delivering:  # their result and its record, not the edit that links to it
            recorded = [asyncio.create_task(run.recorded.wait()) for run in delivering]
            _done, waiting = await asyncio.wait(recorded, timeout=SHUTDOWN_GRACE)
            for waiter in waiting:
                waiter.cancel()
            for _run, task in runs:  # a result not recorded yet is reconciled at the next start
                task.cancel()
        if runs:
            await asyncio.wait([task for _run, task in runs], timeout=SHUTDOWN_GRACE)
        restarting = "The bot is restarting; job #{} will resume when it is back."
        notes = [run.show(restarting.format(run.id)) for run in paused]
        if notes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*notes, return_exceptions=True), SHUTDOWN_NOTE
                )

    async def _stop_admitting(self) -> None:
        """Let requests being queued right now register their run for `ADMISSION_GRACE`,
        then cancel the rest, so that no run starts after the shutdown looked. A cancelled
        admission either reserved its job (left `queued` in the ledger: the next start runs
        it, answering its interaction) or charged nothing: the ledger's transaction is whole
        or not at all."""
        if not self._admitting:
            return
        await asyncio.wait(set(self._admitting), timeout=ADMISSION_GRACE)
        late = set(self._admitting)
        if late:
            log.info("shutting down: %d request(s) still being queued are left", len(late))
            for task in late:
                task.cancel()
            await asyncio.wait(late, timeout=SHUTDOWN_GRACE)
