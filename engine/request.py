"""What a caller asks for, and the checks that run before anything is queued.

Pure Python (no torch): the schedulers and the front end import it freely.
"""

from __future__ import annotations

import math
import re
import secrets
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .config import Limits, LoraSpec
from .edits import edit_problem, fitted_references
from .errors import InvalidRequest
from .fixing import checked_fix
from .inpaint import DEFAULT_INPAINT_STRENGTH, checked_inpaint, fitted_mask
from .lora_tags import LoraSet, extract_loras, resolve_loras, without_tags
from .sizing import resolve_size

if TYPE_CHECKING:
    from PIL.Image import Image

from .profile import ModelProfile

__all__ = [
    "DEFAULT_STRENGTH",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "MAX_STRENGTH",
    "MIN_STRENGTH",
    "BatchKey",
    "ImageRequest",
    "clean_text",
    "model_text",
    "validate",
]

MAX_SEED = 2**32 - 1
#: Far above any tokenizer limit; keeps a 10 000-character paste from being tokenized at all.
MAX_PROMPT_CHARS = 2000
#: Image-to-image strength: the share of the denoising schedule run over the init image.
MIN_STRENGTH = 0.05
MAX_STRENGTH = 1.0
DEFAULT_STRENGTH = 0.6


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """One user's ask. `None` fields take the model's defaults when the engine accepts it.

    `count` images are made from seeds `seed`, `seed + 1`, ...; `user` is the fairness key
    (requests are interleaved between users, never between one user's own requests).

    With `init_image` (an RGB Pillow image) the request is image-to-image: the picture is
    re-noised to `strength` of the schedule and denoised from there, as diffusers'
    image-to-image pipelines do. `validate` resizes it to the request's size.

    With `references` the request is an edit by instruction (`prompt` says what to change),
    on a model whose pipeline edits (`ModelProfile.edits`): the pictures are the pipeline's
    `image`, the first one the picture being edited, and the result keeps its aspect ratio
    at the model's native area. `validate` fits each one as the pipeline reads it
    (`sizing.reference_size`).

    With a `mask` too it is inpainting (`engine.inpaint`): only the mask's white area is made
    anew, its seam blurred by `mask_blur` pixels; with `inpaint_padding` only the area around
    the mask is inpainted, at the request's size, and pasted back into the picture.
    """

    prompt: str
    negative_prompt: str = ""
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    count: int = 1
    user: str = ""
    init_image: Image | None = field(default=None, compare=False, repr=False)
    strength: float | None = None
    #: Extra "Key: value" fields for the PNG's parameters (e.g. where an upscale came from).
    parameters: tuple[tuple[str, str], ...] = ()
    #: "W:H": the model's native pixel area at this aspect ratio (instead of width/height).
    aspect: str | None = None
    #: "square", "portrait" or "landscape": the model's own sizes of that shape (`sizing`).
    shape: str | None = None
    #: A configured model's name (None: the default model).
    model: str | None = None
    #: LoRAs and weights; `validate` adds those written `<lora:name:weight>` in the prompt.
    loras: LoraSet = ()
    #: 77-token windows the prompts take once weighted and chunked (set by `validate`);
    #: requests with different counts cannot share a UNet call.
    chunks: int = 1
    #: The pictures to edit by instruction (RGB Pillow images; empty: not an edit).
    references: tuple[Image, ...] = field(default=(), compare=False, repr=False)
    #: Faster, slightly different images through the model's step cache (`/imagine
    #: quality:fast`); once validated: whether this request's steps are cached (a model that
    #: caches every request sets it).
    fast: bool = False
    #: Inpainting: white where `init_image` is made anew (an "L" image of its size).
    mask: Image | None = field(default=None, compare=False, repr=False)
    mask_blur: int | None = None  # pixels (None: A1111's 4)
    inpaint_padding: int | None = None  # "Only masked" with this padding (None: whole picture)
    #: What to fix once the images are made (`fixstage.py`): "faces", "hands" or both, in
    #: `FIX_TARGETS` order (empty: nothing; `/imagine fix:`).
    fix: tuple[str, ...] = ()

    @property
    def inpaint(self) -> str:
        """How it inpaints: "" (it does not), "whole" or "masked" (`inpaint_padding`)."""
        if self.mask is None:
            return ""
        return "whole" if self.inpaint_padding is None else "masked"

    @property
    def key(self) -> BatchKey:
        """What must match for two requests to share one pipeline call."""
        assert self.width is not None and self.height is not None and self.steps is not None
        assert self.guidance is not None and self.model is not None
        return BatchKey(
            self.width,
            self.height,
            self.steps,
            float(self.guidance),
            self.image_strength,
            model=self.model,
            loras=self.loras,
            chunks=self.chunks,
            references=tuple((im.width, im.height) for im in self.references),
            inpaint=self.inpaint,
        )

    @property
    def image_strength(self) -> float | None:
        """`strength` when the request is image-to-image (it has an `init_image`), else None:
        what the batch key, the PNG's parameters and the ledger record."""
        return None if self.init_image is None else self.strength

    @property
    def tagged_prompt(self) -> str:
        """The prompt with its LoRAs written in as A1111 writes them (`<lora:name:weight>`):
        what the PNG's parameters and the ledger keep, so that reading it back (a reroll, a
        restart, another tool) applies the same LoRAs."""
        tags = (f"<lora:{name}:{weight:g}>" for name, weight in self.loras)
        return " ".join(filter(None, (self.prompt, *tags)))

    @property
    def denoising_steps(self) -> int:
        """Steps actually run: image-to-image skips the first `1 - strength` of the schedule
        (diffusers' `get_timesteps`)."""
        assert self.steps is not None
        if self.init_image is None or self.strength is None:
            return self.steps
        return min(int(self.steps * self.strength), self.steps)

    @property
    def seeds(self) -> list[int]:
        """One seed per image, wrapping at 2**32 like other SD tools."""
        assert self.seed is not None
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.count)]


@dataclass(frozen=True, slots=True)
class BatchKey:
    """Parameters a diffusers pipeline call cannot vary between its items."""

    width: int
    height: int
    steps: int
    guidance: float
    strength: float | None = None  # image-to-image (None: text-to-image)
    model: str = ""  # never mixed: each model is its own pipeline
    loras: LoraSet = ()  # adapters are set per pipeline call, not per image
    chunks: int = 1  # text embeddings of one length per UNet call
    #: An edit's reference pictures' sizes (as fitted): their tokens join the denoiser's
    #: sequence and their positions its shared ids, so only edits of equal sizes share a call.
    references: tuple[tuple[int, int], ...] = ()
    inpaint: str = ""  # `ImageRequest.inpaint`: another pipeline than image-to-image's

    @property
    def group(self) -> tuple[str, LoraSet, int, int, int, tuple[tuple[int, int], ...], bool]:
        """What must match to share one UNet forward (step scheduling): steps, guidance and
        strength may differ there; inpainting shares with inpainting (FLUX.2 klein's inpaint
        pipeline adds the picture's tokens to the sequence), edits with edits of the same
        picture sizes."""
        return (
            self.model,
            self.loras,
            self.chunks,
            self.width,
            self.height,
            self.references,
            bool(self.inpaint),
        )


def clean_text(text: str) -> str:
    """Drop control and invisible formatting characters and collapse whitespace.

    Null bytes, zero-width and bidi-override characters carry no meaning for a text encoder
    and only make logs and Discord captions confusing.
    """
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\n\t\r":
            kept.append(" ")
        elif cat in {"Cc", "Cf", "Cs", "Co", "Cn"}:
            continue
        else:
            kept.append(ch)
    return " ".join("".join(kept).split())


def model_text(text: str) -> str:
    """The words a text encoder reads of a prompt: `clean_text`, without `<lora:...>` tags and
    without A1111's weighting syntax (escapes resolved, a BREAK read as a space).

    What a word filter must look at: a zero-width space, a soft hyphen, empty brackets
    (`nu()de`) or a lone backslash inside a word are gone by the time the model reads it.
    Syntax the parser refuses (`(a:1.2.3)`, refused by `validate` too) is read with every
    bracket and backslash dropped.
    """
    from .weighting import plain_text  # torch-free: that module imports torch lazily

    prompt = " ".join(without_tags(clean_text(text)).split())
    try:
        return plain_text(prompt)
    except ValueError:
        return re.sub(r"[\\()\[\]]", "", prompt)


def _check_weights(prompt: str, negative: str) -> None:
    """`InvalidRequest` for weights A1111 would fail on, such as `(a:1.2.3)`, or that would
    overflow the encoder, such as `(a:1e9)` (`weighting.MAX_WEIGHT`)."""
    from .weighting import WeightError, checked_attention  # torch-free, as `model_text`

    for name, text in (("prompt", prompt), ("negative_prompt", negative)):
        try:
            checked_attention(text, name.replace("_", " "))
        except WeightError as exc:
            raise InvalidRequest(name, str(exc)) from None


def _int_in(name: str, value: object, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(name, f"{what} must be a whole number, not {value!r}.")
    if not low <= value <= high:
        raise InvalidRequest(name, f"{what} must be between {low} and {high}, not {value}.")
    return value


def validate(
    request: ImageRequest,
    limits: Limits,
    profile: ModelProfile,
    count_tokens: Callable[[str], int],
    *,
    loras: Mapping[str, LoraSpec] | None = None,
    count_chunks: Callable[[str, str], int] | None = None,
    fixers: Collection[str] = (),
) -> tuple[ImageRequest, list[str]]:
    """Return the request with every field resolved, and warnings for the user.

    `profile` is the request's model's. Raises `InvalidRequest` naming the field and the
    allowed range. `<lora:name:weight>` tags leave the prompt for `loras` (checked against the
    configured `loras` and the model). Weights are checked where the model reads them
    (`profile.weighted`), else taken out with a note. With `count_chunks` (models whose
    prompts are weighted and chunked: SD, SDXL) a long prompt takes more 77-token windows,
    up to `limits.max_prompt_chunks` (the longer of prompt and negative prompt counts);
    without, a prompt longer than the window is truncated (as every SD tool does) with a
    warning. `fixers`: what `fix` may name here (the targets with a detector configured).
    """
    warnings: list[str] = []
    if not isinstance(request.prompt, str) or not isinstance(request.negative_prompt, str):
        raise InvalidRequest("prompt", "The prompt must be text.")
    if len(request.prompt) > MAX_PROMPT_CHARS * 4:
        raise InvalidRequest(
            "prompt", f"The prompt is too long (limit {MAX_PROMPT_CHARS} characters)."
        )
    prompt, tags = extract_loras(clean_text(request.prompt))
    negative = clean_text(request.negative_prompt)
    if not prompt:
        raise InvalidRequest("prompt", "The prompt is empty. Describe the image you want.")
    chosen_loras = resolve_loras(tags, request.loras, profile.name, loras or {})
    if negative and not profile.negative_prompt:
        warnings.append(
            f"The model {profile.name} does not read a negative prompt, so it was left out."
        )
        negative = ""
    if not profile.weighted:  # its text encoder would read the brackets as words
        plain, plain_negative = model_text(prompt), model_text(negative)
        if (plain, plain_negative) != (prompt, negative):
            warnings.append(
                f"The model {profile.name} reads no prompt weights, so (word:1.2), [word] and "
                "BREAK were taken out of the prompt."
            )
            prompt, negative = plain, plain_negative
        if not prompt:
            raise InvalidRequest("prompt", "The prompt is empty. Describe the image you want.")
    else:  # weights the encoder could not take are refused, as A1111 fails on them
        _check_weights(prompt, negative)
    for name, text in (("prompt", prompt), ("negative_prompt", negative)):
        if len(text) > MAX_PROMPT_CHARS:
            raise InvalidRequest(
                name,
                f"The {name.replace('_', ' ')} is too long (limit {MAX_PROMPT_CHARS} characters).",
            )
        read = model_text(text) if profile.weighted else text  # the syntax is no token
        used = count_tokens(read) if text and count_chunks is None else 0
        if used > profile.max_tokens:
            warnings.append(
                f"The {name.replace('_', ' ')} is {used} tokens long; the model reads only "
                f"the first {profile.max_tokens}, so the rest was truncated."
            )
    chunks = count_chunks(prompt, negative) if count_chunks is not None else 1
    if chunks > limits.max_prompt_chunks:
        raise InvalidRequest(
            "prompt",
            f"The prompt is too long: it takes {chunks} windows of 75 tokens (each BREAK starts "
            f"a new one), and at most {limits.max_prompt_chunks} are allowed. Shorten it or use "
            "fewer BREAKs.",
        )

    init = request.init_image
    strength = request.strength
    references = tuple(request.references)
    if references and (
        problem := edit_problem(
            profile.name,
            profile.max_references,
            len(references),
            init=init is not None,
            strength=strength is not None,
        )
    ):
        raise problem
    if init is None and strength is not None:
        raise InvalidRequest("strength", "Strength applies only when starting from an image.")
    mask, blur, padding, notes = checked_inpaint(request, profile, limits)
    warnings += notes
    if init is not None and mask is None and not profile.img2img:
        raise InvalidRequest(
            "image", f"The model {profile.name} cannot start from a picture: leave out the image."
        )
    if init is not None:
        default = DEFAULT_STRENGTH if mask is None else DEFAULT_INPAINT_STRENGTH
        strength = default if strength is None else strength
        if isinstance(strength, bool) or not isinstance(strength, int | float):
            raise InvalidRequest("strength", f"Strength must be a number, not {strength!r}.")
        if not MIN_STRENGTH <= strength <= MAX_STRENGTH:  # NaN fails too
            raise InvalidRequest(
                "strength",
                f"Strength must be between {MIN_STRENGTH:g} and {MAX_STRENGTH:g}, "
                f"not {strength:g}.",
            )
        strength = float(strength)

    steps = request.steps if request.steps is not None else profile.default_steps
    if init is not None and request.steps is None and strength is not None:
        # A turbo model's 1 step at strength 0.6 would run no step at all.
        steps = max(steps, math.ceil(1 / strength - 1e-9))
    steps = _int_in("steps", steps, 1, limits.max_steps, "Steps")
    if strength is not None and int(steps * strength) < 1:
        raise InvalidRequest(
            "strength",
            f"With {steps} steps, strength {strength:g} leaves no step to run: raise either.",
        )
    count = _int_in("count", request.count, 1, limits.max_count, "Image count")

    guidance = request.guidance if request.guidance is not None else profile.default_guidance
    if isinstance(guidance, bool) or not isinstance(guidance, int | float) or guidance != guidance:
        raise InvalidRequest("guidance", f"Guidance must be a number, not {guidance!r}.")
    if not 0.0 <= guidance <= limits.max_guidance:
        raise InvalidRequest(
            "guidance", f"Guidance must be between 0 and {limits.max_guidance:g}, not {guidance:g}."
        )

    multiple = profile.multiple
    picture = init if init is not None else next(iter(references), None)  # keeps its aspect
    width, height = resolve_size(
        width=request.width,
        height=request.height,
        shape=request.shape,
        aspect=request.aspect,
        picture_aspect=None if picture is None else picture.width / max(1, picture.height),
        native=profile.native_size,
        multiple=multiple,
        limits=limits,
    )
    sizes = {}
    for name, value, high in (
        ("width", width, limits.max_width),
        ("height", height, limits.max_height),
    ):
        value = profile.native_size if value is None else value
        value = _int_in(name, value, limits.min_size, high, name.capitalize())
        if value % 8:
            raise InvalidRequest(name, f"{name.capitalize()} must be a multiple of 8, not {value}.")
        sizes[name] = value

    fix = checked_fix(request.fix, fixers, profile)

    if not isinstance(request.fast, bool):
        raise InvalidRequest("fast", f"Fast must be true or false, not {request.fast!r}.")
    if request.fast and profile.cache == "off":
        raise InvalidRequest(
            "fast", f"The model {profile.name} has no fast mode: ask at full quality."
        )
    fast = profile.cache != "off" and (request.fast or profile.cache_all)

    seed = request.seed
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    seed = _int_in("seed", seed, 0, MAX_SEED, "Seed")

    # The picture at the request's size; "Only masked" keeps its own (the crop is resized).
    canvas = (sizes["width"], sizes["height"]) if init is None or padding is None else init.size
    resolved = replace(
        request,
        prompt=prompt,
        negative_prompt=negative,
        seed=seed,
        steps=steps,
        guidance=float(guidance),
        width=sizes["width"],
        height=sizes["height"],
        aspect=None,  # resolved into width and height: a checked request is self-consistent
        shape=None,
        count=count,
        user=str(request.user),
        init_image=None if init is None else _fitted(init, *canvas),
        mask=None if mask is None else fitted_mask(mask, *canvas),
        mask_blur=blur,
        inpaint_padding=padding,
        references=fitted_references(
            references,
            _fitted,
            sizes=profile.reference_sizes,
            area=profile.reference_area or profile.native_size**2,
            multiple=profile.reference_multiple,
            min_side=limits.min_size,
        ),
        strength=strength,
        model=profile.name,
        loras=chosen_loras,
        chunks=chunks,
        fast=fast,
        fix=fix,
    )
    return resolved, warnings


def _fitted(image: Image, width: int, height: int) -> Image:
    """The init image in RGB at exactly the request's size (as the pipeline will see it):
    cropped around its centre to the request's aspect ratio, never stretched."""
    from PIL import Image as PILImage
    from PIL import ImageOps

    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (width, height):
        image = ImageOps.fit(image, (width, height), PILImage.Resampling.LANCZOS)
    return image
