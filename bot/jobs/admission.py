"""Admission: whether a request may run, and if so its reservation and its engine job.

In order, each refusal recorded in the ledger (so moderators see it in `/usage`) and raised
as a `Refusal` the tree turns into a private message:

    rate limit → channel → blocked words → forged options → edit model → picture → `--no`
    and the prompt's {…} choices → validation → reservation → the picture stored → submit

A prompt's `{a, b}` choices (`engine.prompt_tools`) make one job per variant, each charged as
usual, all or none: past `[quota] max_permutations` (or the member's `max_queued_per_user`),
or when a reservation is turned down, none is queued and nothing is charged. `--no words`
joins the negative prompt where the model reads one.

An Upscale or Vary (`admit_derived`) starts at the channel, then the blocked words: the
server's rules of now, not those of the day its source was made.

Nothing here knows a `discord.Interaction`: the caller describes the request's `Origin`.
A request refused before the reservation costs nothing; after it, the reservation is undone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from engine import Busy, Checked, EngineClient, EngineError, ImageRequest, InvalidRequest, Job
from engine.prompt_tools import apply_no, count_variants, expand_permutations

from ..errors import RateLimited, Refusal
from ..images.pictures import BadPicture, fetch_picture
from ..ledger import JobKind, JobRecord, JobRef, JobRequest, RefusalReason, Reservation
from ..moderation.rules import Moderation
from ..services import Services
from ..services.options import ImagineOptions
from .convert import Origin, engine_request, ledger_request
from .gan import ready_job, upscaler_name
from .pricing import fix_units, price

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["Admission", "Admitted", "edit_models", "not_an_edit_model", "refusal_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request that is queued in the engine with its images reserved in the ledger."""

    record: JobRecord
    engine_job: Job
    warnings: tuple[str, ...]


def edit_models(engine: EngineClient) -> list[str]:
    """The configured models that edit pictures by instruction, in the config's order (the
    first is `/edit`'s and the Edit button's)."""
    return [name for name in engine.model_names if engine.profile_of(name).edits]


def not_an_edit_model(engine: EngineClient, model: str | None, pictures: int) -> str | None:
    """Why `model` cannot edit `pictures` pictures by instruction (one line naming the
    models that can), else None."""
    editors = edit_models(engine)
    if not editors:
        return "No model on this bot edits pictures by instruction."
    try:
        profile = engine.profile_of(model)
    except InvalidRequest as exc:
        return str(exc)
    if not profile.edits:
        return (
            f"The model {profile.name} does not edit pictures by instruction; "
            f"these do: {', '.join(editors)}."
        )
    if pictures > profile.max_references:
        return (
            f"The model {profile.name} edits {profile.max_references} picture(s) at a time, "
            f"not {pictures}: leave out image2 and image3."
            if profile.max_references == 1
            else f"The model {profile.name} edits at most {profile.max_references} pictures "
            f"at a time, not {pictures}."
        )
    return None


def _blocked(word: str) -> tuple[str, str]:
    """The user's message and the ledger's detail for a prompt with a blocked word."""
    return (
        f"Your prompt contains a word this server does not allow ({word!r}).",
        f"blocked word {word!r}",
    )


def refusal_for(reservation: Reservation) -> Refusal:
    """The user's message for a reservation the ledger turned down."""
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


class Admission:
    """Checks, reserves and queues one request at a time (see the module doc)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def admit(
        self,
        origin: Origin,
        options: ImagineOptions,
        *,
        reroll_of: int | None = None,
        picture: Image | None = None,
        references: Sequence[Image] = (),
    ) -> list[Admitted]:
        """Queue the request, one job per variant of its prompt's {…} choices, or raise the
        `Refusal` to show (recorded in the ledger).

        An image-to-image request starts from `picture`, else from the attachment in
        `options` (fetched here, after the cheap checks); an edit (`/edit`: `options` has
        references) changes `references`, else the attachments it names.
        """
        s = self.services
        edited = len(references) or len(options.references)  # pictures an edit changes
        kind = JobKind.EDIT if edited else JobKind.IMAGINE
        if kind is JobKind.EDIT and options.model is None:  # the first model that edits
            options = replace(options, model=next(iter(edit_models(s.engine)), None))
        rules = await s.rules.moderation(origin.guild_id)
        try:  # the server's forced negative prompt, for models that read one
            forced = s.engine.profile_of(options.model).negative_prompt
        except InvalidRequest:  # an unknown model: refused below by `check`, with its name
            forced = True
        prompt, typed_negative, notes = apply_no(
            options.prompt, options.negative, reads_negative=forced
        )
        negative = rules.negative_prompt(typed_negative) if forced else typed_negative
        asked = engine_request(
            replace(options, prompt=prompt), negative=negative, user=origin.fairness_key
        )

        async def refuse(reason: RefusalReason, text: str, detail: str | None = None) -> Refusal:
            stored = self._stored(origin, asked, reroll_of=reroll_of, kind=kind)
            await s.ledger.record_refusal(stored, reason, detail)
            return Refusal(reason, text)

        # Before any other check: a flood costs one refusal row each. Reroll presses were
        # counted by the button.
        if reroll_of is None:
            wait = s.rate_limit.hit(origin.user_id)
            if wait is not None:
                limited = RateLimited.after(wait)
                await refuse(RefusalReason.RATE_LIMITED, str(limited))
                raise limited
        elsewhere = self._wrong_channel(origin, rules)
        if elsewhere is not None:
            raise await refuse(RefusalReason.CHANNEL, elsewhere)
        word = rules.blocked_word(options.prompt, options.negative)
        if word is not None:
            raise await refuse(RefusalReason.BLOCKED_WORD, *_blocked(word))
        forged = options.problem()
        if forged is not None:
            raise await refuse(RefusalReason.INVALID, forged, forged)
        if kind is JobKind.EDIT:
            wrong = not_an_edit_model(s.engine, options.model, edited)
            if wrong is not None:
                raise await refuse(RefusalReason.INVALID, wrong, wrong)
            pictures = list(references)
            if not pictures:
                for ref in options.references:
                    try:
                        pictures.append(
                            await fetch_picture(
                                ref,
                                api_base_url=s.config.discord.api_base_url,
                                max_mb=s.config.images.max_picture_mb,
                            )
                        )
                    except BadPicture as exc:
                        raise await refuse(RefusalReason.INVALID, str(exc), str(exc)) from exc
            asked = replace(asked, references=tuple(pictures))
        try:  # counted before the picture is fetched, and before any variant is made
            variants = self._variants(prompt)
        except InvalidRequest as exc:
            raise await refuse(RefusalReason.INVALID, str(exc), str(exc)) from exc
        if picture is None and options.picture is not None:
            try:
                picture = await fetch_picture(
                    options.picture,
                    api_base_url=s.config.discord.api_base_url,
                    max_mb=s.config.images.max_picture_mb,
                )
            except BadPicture as exc:
                raise await refuse(RefusalReason.INVALID, str(exc), str(exc)) from exc
        if picture is not None:
            asked = replace(asked, init_image=picture)
        checked = []
        for variant in variants:
            try:
                checked.append(await s.engine.check(replace(asked, prompt=variant)))
            except InvalidRequest as exc:
                raise await refuse(RefusalReason.INVALID, str(exc), str(exc)) from exc
        stored = [self._stored(origin, c.request, reroll_of=reroll_of, kind=kind) for c in checked]
        return await self._reserve_and_submit_all(stored, checked, tuple(notes))

    def _variants(self, prompt: str) -> list[str]:
        """The prompts `prompt` stands for: itself, as typed, when it has no {…} choices."""
        if count_variants(prompt) == 1:
            return [prompt]
        quota = self.services.config.quota
        # More jobs than a member may have queued could never all be reserved.
        limit = min(quota.max_permutations, quota.max_queued_per_user)
        return expand_permutations(prompt, limit=limit)

    async def admit_derived(
        self,
        origin: Origin,
        asked: ImageRequest,
        *,
        kind: JobKind,
        source: tuple[int, int] | None,
        reroll_of: int | None = None,
        gan_alone: bool = False,
    ) -> Admitted:
        """Queue a request made from image `source` (job id, index) of an earlier job, or
        from a member's picture (None): an upscale, a variation, a canvas (a button press,
        whose rate limit the button counted), charged by `price`; or raise the `Refusal`.

        The server's rules of now apply, not those of the source's day: its blocked words
        refuse it, and its forced negative prompt is added. With `gan_alone` (Upscale
        (subtle)) the request's picture is its image (`gan.ready_job`), stored as 0 steps."""
        s = self.services

        def stored(request: ImageRequest) -> JobRequest:
            made = self._stored(origin, request, kind=kind, source=source, reroll_of=reroll_of)
            return replace(made, steps=0) if gan_alone else made

        async def refuse(reason: RefusalReason, text: str, detail: str | None = None) -> Refusal:
            await s.ledger.record_refusal(stored(asked), reason, detail or text)
            return Refusal(reason, text)

        rules = await s.rules.moderation(origin.guild_id)
        try:  # the server's forced negative prompt, for models that read one
            forced = s.engine.profile_of(asked.model).negative_prompt
        except InvalidRequest:  # an unknown model: refused below by `check`, with its name
            forced = True
        if forced:
            asked = replace(asked, negative_prompt=rules.negative_prompt(asked.negative_prompt))
        elsewhere = self._wrong_channel(origin, rules)
        if elsewhere is not None:
            raise await refuse(RefusalReason.CHANNEL, elsewhere)
        word = rules.blocked_word(asked.prompt, asked.negative_prompt)
        if word is not None:
            raise await refuse(RefusalReason.BLOCKED_WORD, *_blocked(word))
        try:
            checked = await s.engine.check(asked)
        except InvalidRequest as exc:
            raise await refuse(RefusalReason.INVALID, str(exc)) from exc
        (admitted,) = await self._reserve_and_submit_all(
            [stored(checked.request)], [checked], gan_alone=gan_alone
        )
        return admitted

    def _wrong_channel(self, origin: Origin, rules: Moderation) -> str | None:
        """The refusal for a channel where images may not be made, else None."""
        if rules.channel_allowed(origin.channel_id, origin.parent_channel_id):
            return None
        allowed = " ".join(f"<#{c}>" for c in rules.settings.allowed_channel_ids)
        return f"Images can't be made here. Try {allowed}."

    def _stored(
        self,
        origin: Origin,
        request: ImageRequest,
        *,
        reroll_of: int | None = None,
        kind: JobKind = JobKind.IMAGINE,
        source: tuple[int, int] | None = None,
    ) -> JobRequest:
        """What the ledger keeps of `request` (checked, or being refused: then its model may
        be unknown, and is stored as asked), charged by its kind's price."""
        s = self.services
        engine = s.engine
        model = request.model or engine.default_model
        try:
            native = engine.profile_of(model).native_size
        except InvalidRequest:  # an unknown model, being refused: its price is not charged
            native = 0
        made = (request.width or 0, request.height or 0, native)
        fix = fix_units(engine, model, *made[:2]) if request.fix else 0
        return ledger_request(
            origin,
            request,
            model=model,
            scheduler=engine.scheduler_of(model),
            charged=price(kind, request.count, s.config.images, made=made, fix=fix),
            kind=kind,
            reroll_of=reroll_of,
            source=source,
        )

    async def _reserve_and_submit_all(
        self,
        stored: list[JobRequest],
        checked: list[Checked],
        notes: tuple[str, ...] = (),
        *,
        gan_alone: bool = False,
    ) -> list[Admitted]:
        """Reserve every job, all or none (a refused one undoes those before it), then store
        their pictures and queue them. A full queue refuses the jobs not queued yet (at no
        cost): the first one raises it, a later one is a warning beside those queued."""
        s = self.services
        records = await self._reserve_all(stored)
        admitted: list[Admitted] = []
        for n, (record, one) in enumerate(zip(records, checked, strict=True)):
            try:
                admitted.append(await self._submit(record, one, notes, gan_alone))
            except Refusal as refusal:
                left = records[n + 1 :]
                for later in left:
                    await s.ledger.refuse(later.id, refusal.reason, str(refusal))
                if not admitted:
                    raise
                dropped = f"{len(left) + 1} of the prompt's variants were not queued: {refusal}"
                last = admitted[-1]
                admitted[-1] = replace(last, warnings=(*last.warnings, dropped))
                break
            except EngineError:
                for later in records[n + 1 :]:
                    await s.ledger.mark_failed(later.id, "not queued: the engine failed")
                raise
        return admitted

    async def _reserve_all(self, stored: list[JobRequest]) -> list[JobRecord]:
        s = self.services
        records: list[JobRecord] = []
        for one in stored:
            reservation = await s.ledger.reserve(one)
            if reservation.accepted:
                records.append(reservation.job)
                continue
            refusal = refusal_for(reservation)
            for record in records:  # as if they never took images
                await s.ledger.refuse(record.id, refusal.reason, str(refusal))
            if len(stored) == 1:
                raise refusal
            raise Refusal(
                refusal.reason,
                f"{refusal} (The prompt's {{...}} choices make {len(stored)} jobs: "
                "none was queued, nothing was charged.)",
            )
        return records

    async def _submit(
        self, record: JobRecord, checked: Checked, notes: tuple[str, ...], gan_alone: bool
    ) -> Admitted:
        s = self.services
        request = checked.request
        if request.init_image is not None or request.references:
            try:  # before the engine: a restart must find the picture to run the job again
                ref = JobRef.of(record)
                if request.references:
                    await asyncio.to_thread(s.images.save_references, ref, request.references)
                elif request.init_image is not None:
                    await asyncio.to_thread(s.images.save_input, ref, request.init_image)
                if request.mask is not None:  # and an inpainting's mask and canvas fields
                    await asyncio.to_thread(
                        s.images.save_mask, ref, request.mask, request.parameters
                    )
            except OSError as exc:
                log.error("job %d: cannot store its picture: %s", record.id, exc)
                await s.ledger.mark_failed(record.id, f"cannot store the picture: {exc}")
                raise Refusal(
                    RefusalReason.INVALID,
                    "The bot cannot store pictures right now; nothing was charged.",
                ) from exc
        try:
            if gan_alone and request.init_image is not None:
                upscaler = upscaler_name(s.engine.config.upscale_model)
                engine_job = ready_job(
                    record.id, record.request, request.init_image, request, upscaler=upscaler
                )
            else:
                engine_job = s.engine.submit(checked, job_id=str(record.id))
        except Busy as exc:
            await s.ledger.refuse(record.id, RefusalReason.QUEUE_FULL, str(exc))
            raise Refusal(
                RefusalReason.QUEUE_FULL,
                "The image queue is full right now. Try again in a minute; "
                "nothing was taken from your quota.",
            ) from exc
        except EngineError as exc:
            await s.ledger.mark_failed(record.id, str(exc))
            raise
        return Admitted(record, engine_job, (*checked.warnings, *notes))
