"""`Actions`: what `/imagine` and the job buttons ask of the job service (`JobActions`).

`/imagine` and `/edit` go to `JobService.imagine`. The buttons are here: Upscale, Vary,
Edit, the canvas (Zoom Out, Pan, Vary (Region), made in `canvas.py`), Reroll, Delete and
Cancel, each for the job's requester or a moderator of the job's own server only, on the
job's own message, for an action its result offers (a custom id can be forged onto any
message). An Upscale or Vary is a new image-to-image job from the chosen image, kept full
size by `ImageStore`; an Edit (once its modal asked what to change) is an edit by instruction
of the chosen image on the first model that edits; a canvas job inpaints it; a Reroll, the
same options with a new seed (a canvas job's from the same canvas and mask, an edit's from
the same pictures, kept by `ImageStore`). Each is charged to whoever pressed the button. Describe
makes no job: the same checks, then the kept picture goes back to the surface, which answers
with prompts (`picture`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import discord

from engine import UPSCALE_FACTOR, ImageRequest, Parameters, upscale_request, variation_request
from engine.canvas import Canvas
from engine.derived import canvas_request

from ..errors import NotAllowed, RateLimited, UnknownJob
from ..images.grid import GRID_IMAGES
from ..images.pictures import PictureRef, fetch_picture
from ..images.store import png_to_rgb
from ..ledger import JobKind, JobRecord, JobRef
from ..moderation.moderators import is_moderator
from ..presentation.buttons import label_of, offered
from ..presentation.modals import MAX_INSTRUCTION, EditModal
from ..services import UPSCALES, Action, ImagineOptions
from .admission import edit_models
from .canvas import canvas_of
from .convert import CANVAS_KINDS, reroll_options, resumed_request, source_of
from .gan import GAN_FACTOR, gan_input
from .service import JobService, origin_of

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["Actions"]

log = logging.getLogger(__name__)


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


def _what(action: Action) -> str:
    """What a press of `action` does, as a refusal to another member says it."""
    if action is Action.MASK:
        return "see their mask"
    verb = "vary" if action in (Action.VARY_SUBTLE, Action.VARY_STRONG) else "change"
    verb = "upscale" if action in UPSCALES else "edit" if action is Action.EDIT else verb
    return f"{'describe' if action is Action.DESCRIBE else verb} them"


class Actions:
    """`services.JobActions` over the process's `JobService` (see the module doc)."""

    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.services = jobs.services

    async def imagine(self, interaction: discord.Interaction[Any], options: ImagineOptions) -> None:
        """Answer `/imagine`: refuse privately, or queue and follow."""
        await self.jobs.imagine(interaction, options)

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
        if record.request.kind in CANVAS_KINDS:
            await self._reroll_canvas(interaction, record)
            return
        picture, references = None, ()
        if record.request.kind is JobKind.EDIT:  # the same pictures, edited anew
            references = await asyncio.to_thread(self.services.images.load_references, job)
            if not references:
                raise NotAllowed(self._gone(f"The picture job #{record.id} edited"))
        elif record.request.strength is not None:
            picture = await asyncio.to_thread(self.services.images.load_input, job)
            if picture is None:
                raise NotAllowed(self._gone(f"The picture job #{record.id} started from"))
        options = reroll_options(record.request)
        await self.jobs.imagine(
            interaction, options, reroll_of=record.id, picture=picture, references=references
        )

    async def _reroll_canvas(
        self, interaction: discord.Interaction[Any], record: JobRecord
    ) -> None:
        """A canvas job again from the same canvas and mask (kept by `ImageStore`), a new seed."""
        ref, stored = JobRef.of(record), record.request
        picture = await asyncio.to_thread(self.services.images.load_input, ref)
        mask = await asyncio.to_thread(self.services.images.load_mask, ref)
        if picture is None or mask is None:
            raise NotAllowed(self._gone(f"The picture job #{record.id} started from"))
        user = origin_of(interaction).fairness_key
        request = dataclasses.replace(resumed_request(stored, picture, mask), seed=None, user=user)
        source = None
        if stored.source_job_id is not None and stored.source_index is not None:
            source = (stored.source_job_id, stored.source_index)
        await self.jobs.derived(
            interaction, request, kind=stored.kind, source=source, reroll_of=record.id
        )

    async def canvas(
        self,
        interaction: discord.Interaction[Any],
        job: JobRef,
        index: int,
        action: Action,
        answers: Mapping[str, str],
    ) -> None:
        """Zoom Out, Pan, Vary (Region) or Fix faces of image `index` of `job` (`canvas.py`),
        charged to the presser by the pixels it makes; a region the words do not find, or a
        picture without a face, costs nothing."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        record, params, image = await self._chosen(interaction, job, index, action)
        request, kind = await canvas_of(
            self.services,
            action,
            answers,
            params,
            image,
            user=origin_of(interaction).fairness_key,
            origin=f"job {record.id}, image {index + 1}",
        )
        await self.jobs.derived(interaction, request, kind=kind, source=(record.id, index))

    async def inpaint(
        self,
        interaction: discord.Interaction[Any],
        picture: PictureRef,
        mask: PictureRef,
        prompt: str,
        model: str | None = None,
    ) -> None:
        """`/inpaint`: a member's picture made anew where their mask is white (a Vary (Region)
        job with no source job), charged by the pixels it makes."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        s = self.services
        wait = s.rate_limit.hit(interaction.user.id)
        if wait is not None:
            raise RateLimited.after(wait)
        fetched = [
            await fetch_picture(
                ref,
                api_base_url=s.config.discord.api_base_url,
                max_mb=s.config.images.max_picture_mb,
            )
            for ref in (picture, mask)
        ]
        image, drawn = fetched
        params = Parameters(prompt, "", 0, "", 0.0, 0, image.width, image.height, model or "")
        request = canvas_request(
            params,
            Canvas(image, drawn, ()),
            s.engine.limits,
            user=origin_of(interaction).fairness_key,
            models=s.engine.model_names,
        )
        await self.jobs.derived(interaction, request, kind=JobKind.REGION, source=None)

    async def upscale(
        self,
        interaction: discord.Interaction[Any],
        job: JobRef,
        index: int,
        how: Action = Action.UPSCALE,
    ) -> None:
        """Image `index` of `job` larger, charged to the presser as an upscale: at twice its
        size refined (hires fix: Upscale), or through the GAN upscaler (`gan.py`) at up to
        four times, refined (Upscale (creative)) or alone (Upscale (subtle))."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        record, params, image = await self._chosen(interaction, job, index, how)
        engine = self.services.engine
        request = upscale_request(
            params,
            image,
            engine.limits,
            factor=UPSCALE_FACTOR if how is Action.UPSCALE else GAN_FACTOR,
            user=origin_of(interaction).fairness_key,
            origin=f"job {record.id}, image {index + 1}",
            models=engine.model_names,
        )
        if how is not Action.UPSCALE:
            request = await gan_input(engine, image, request)
        await self.jobs.derived(
            interaction,
            request,
            kind=JobKind.UPSCALE,
            source=(record.id, index),
            gan_alone=how is Action.UPSCALE_SUBTLE,
        )

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
        await self.jobs.derived(
            interaction, request, kind=JobKind.VARIATION, source=(record.id, index)
        )

    async def ask_edit(
        self, interaction: discord.Interaction[Any], job: JobRef, index: int
    ) -> None:
        """Open the modal asking what to change in image `index` of `job` (the modal is the
        press's answer, so the checks come first: a refusal costs no modal)."""
        await self._checked(interaction, job, index, Action.EDIT)
        await interaction.response.send_modal(EditModal(job, index))

    async def edit(
        self, interaction: discord.Interaction[Any], job: JobRef, index: int, instruction: str
    ) -> None:
        """Image `index` of `job` edited by `instruction` (the modal's text) on the first
        model that edits, at the picture's aspect ratio, charged to the presser like one
        image."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        if not instruction or len(instruction) > MAX_INSTRUCTION:
            raise NotAllowed(f"Say what to change in 1 to {MAX_INSTRUCTION} characters.")
        record, _, image = await self._chosen(interaction, job, index, Action.EDIT)
        request = ImageRequest(
            prompt=instruction,
            user=origin_of(interaction).fairness_key,
            references=(image,),
            model=edit_models(self.services.engine)[0],  # `_checked`: there is one
            parameters=(("Source", f"job {record.id}, image {index + 1}"),),
        )
        await self.jobs.derived(interaction, request, kind=JobKind.EDIT, source=(record.id, index))

    async def picture(
        self, interaction: discord.Interaction[Any], job: JobRef, index: int, action: Action
    ) -> Image:
        """Image `index` of `job` at full size for `action` (Describe), after `_chosen`'s
        checks; nothing is charged or recorded (the surface deferred the interaction)."""
        return (await self._chosen(interaction, job, index, action))[2]

    async def _chosen(
        self, interaction: discord.Interaction[Any], job: JobRef, index: int, action: Action
    ) -> tuple[JobRecord, Parameters, Image]:
        """The job, parameters and full-size picture of image `index` a button names; only
        its requester or a moderator, on the job's own message, for an action its result
        offers, while the image is kept. The parameters are the ledger's (`source_of`); the
        kept PNG gives only the picture."""
        record, png = await self._checked(interaction, job, index, action)
        return record, source_of(record.request, index), await asyncio.to_thread(png_to_rgb, png)

    async def mask(self, interaction: discord.Interaction[Any], job: JobRef) -> bytes:
        """The kept mask `job` inpainted with, as a PNG, after the press's checks (its
        requester or a moderator, on its own message, a job that made one); nothing is
        charged or recorded (the surface deferred the interaction)."""
        await self._pressed(interaction, job, Action.MASK)
        png = await asyncio.to_thread(self.services.images.mask_png, job)
        if png is None:
            raise NotAllowed(self._gone(f"The mask of job #{job.id}"))
        return png

    async def _checked(
        self, interaction: discord.Interaction[Any], job: JobRef, index: int, action: Action
    ) -> tuple[JobRecord, bytes]:
        """The job and the kept PNG of image `index` a button names, once `_chosen`'s checks
        pass (an Edit also needs a model that edits)."""
        record = await self._pressed(interaction, job, action)
        if action is Action.EDIT and not edit_models(self.services.engine):
            raise NotAllowed("No model on this bot edits pictures by instruction.")
        png = await asyncio.to_thread(self.services.images.load_output, job, index)
        if png is None and record.unkept:
            raise NotAllowed(
                f"The bot could not keep image {index + 1} of job #{job.id} when it was made "
                f"({record.unkept}), so it cannot start from it."
            )
        if png is None:
            raise NotAllowed(self._gone(f"Image {index + 1} of job #{job.id}"))
        return record, png

    async def _pressed(
        self, interaction: discord.Interaction[Any], job: JobRef, action: Action
    ) -> JobRecord:
        """The job a button names, once its press may act: on the job's own message, by its
        requester or a moderator, for an action its result offers."""
        record = await self._known(interaction, job)
        if not _on_its_message(interaction, record.message_id):
            raise NotAllowed(f"This button does not belong to job #{job.id}.")
        if not self._may_manage(interaction, record):
            raise NotAllowed(
                f"Only the person who asked for these images, or a moderator, can {_what(action)}."
            )
        _offers(record, action)
        return record

    async def _known(self, interaction: discord.Interaction[Any], job: JobRef) -> JobRecord:
        """The job a button names, in the presser's server; else `UnknownJob`."""
        await self.jobs.recorded(job.id)
        record = await self.services.ledger.get_job(job.id)
        if not job.names(record) or record.request.guild_id != (interaction.guild_id or 0):
            raise UnknownJob()
        return record

    def _gone(self, what: str) -> str:
        days = self.services.config.images.keep_days
        return f"{what} is no longer kept (the bot keeps images for {days} days)."

    async def delete(self, interaction: discord.Interaction[Any], job: JobRef) -> None:
        """Delete the result message the button is on: its requester or a moderator only."""
        await interaction.response.defer()  # acknowledges the click before the database
        await self.jobs.recorded(job.id)
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
        run = self.jobs.run_of(job_id)
        known = (run.record, run.engine_job) if run is not None else self.jobs.submitted(job_id)
        if known is not None and not job.names(known[0]):
            raise UnknownJob()
        not_yours = "Only the person who asked for this job, or a moderator, can cancel it."
        if known is not None:
            record, engine_job = known
            progress = run.target.message_id if run is not None else None
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
