"""The image loop end to end: a 2×2 grid, U and V buttons, Upscale and Vary on one image,
Zoom Out, Pan and Vary (Region) on one image (the tiny CLIPSeg finds the region), Fix faces
(the tiny YOLOS face detector finds them) and hands (its hand twin), `/imagine fix:`, Upscale
(subtle) and (creative) through a GAN upscaler (the tiny ESRGAN, read by spandrel), a restart
between the grid and a press, a Cancel during an upscale, and what each costs;
choosing among three models (two SD, one FLUX.1), with a LoRA, from Discord; `quality:fast`
through a model's step cache.

The real bot against the Discord-compatible server, on the step-level scheduler (requests
join and leave between denoising steps), the database read back after each step.
"""

from __future__ import annotations

import io
import re
import runpy
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from diffusers import UNet2DConditionModel
from PIL import Image, ImageOps

from bot.ledger import ACTIVE_STATUSES, JobKind, JobStatus
from engine import EngineConfig, read_parameters
from engine.canvas import fix_canvas, region_mask, zoom_out
from engine.derived import FIX_STRENGTH
from engine.inpaint import blurred, fitted_mask
from engine.tiny import builtin_folder
from engine.vision import Helpers
from testkit.discord_server import AttachmentOption, Interaction, Message
from testkit.jobs import (
    JOB_TIMEOUT,
    button_id,
    job_id_of,
    job_of,
    read_ledger,
    result_of,
    wait_result,
)
from testkit.lora import make_tiny_lora
from testkit.world import NewWorld, World

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("clean_world")]

UPSCALE_COST = 3  # [images] upscale_cost, not the default, so the test sees it is used
LARGEST = 128  # [engine] max_width and max_height: the size cap, the "other" model's size
REGION_MODEL = "builtin:tiny-clipseg"  # [region] model: Vary (Region) finds parts in words
UPSCALE_MODEL = "builtin:tiny-esrgan"  # [upscale] model: Upscale (subtle) and (creative)
FIX_DETECTOR = "builtin:tiny-face-detector"  # [fix] detector: Fix faces
HANDS_DETECTOR = "builtin:tiny-hand-detector"  # [fix] hands_detector: Fix hands
STUBS = Path(__file__).parents[1] / "stubs"  # spandrel without torchvision (sitecustomize)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(new_world: NewWorld) -> AsyncIterator[World]:
    async with new_world(guild="Loop Club", users=("alice", "bob", "carol")) as world:
        unet = builtin_folder("builtin:tiny-b", world.model_cache) / "unet"
        lora = make_tiny_lora(
            UNet2DConditionModel.from_pretrained(unet), world.tmp / "ink.safetensors", seed=3
        )
        world.configure(
            quota={"daily_images": 40, "max_queued_per_user": 3},
            images={"upscale_cost": UPSCALE_COST},
            engine={
                "default_model": "tiny",
                "max_loaded_models": 1,
                "max_width": LARGEST,
                "max_height": LARGEST,
                "scheduling": "step",
            },
            models={
                "tiny": {"source": "builtin:tiny", "cache": "deepcache"},
                "other": {
                    "source": "builtin:tiny-b",
                    "description": "other weights",
                    "size": LARGEST,  # its images are at the size cap
                },
                "flux": {"source": "builtin:tiny-flux-dev", "description": "a FLUX.1 [dev]"},
            },
            loras={"ink": {"source": str(lora), "weight": 0.8, "models": ["other"]}},
            region={"model": REGION_MODEL},
            upscale={"model": UPSCALE_MODEL},
            fix={"detector": FIX_DETECTOR, "hands_detector": HANDS_DETECTOR},
            moderation={"commands_per_minute": 60},  # the canvas test presses many buttons
            describe={"model": ""},  # off: the layouts below have no Describe
        )
        async with world.running_bot(pythonpath=[STUBS]):
            yield world


def labels(message: Message) -> list[str]:
    """The buttons' labels, an arrow's emoji for one without a label (Pan)."""
    return [label for row in rows(message) for label in row]


def rows(message: Message) -> list[list[str]]:
    return [
        [c.get("label") or c["emoji"]["name"] for c in row["components"]]
        for row in message.components
    ]


VARY_ROW = ["Vary (subtle)", "Vary (strong)", "Vary (Region)"]
CANVAS_ROWS = [
    ["Zoom Out 2x", "Zoom Out 1.5x", "Custom Zoom", "Fix faces"],
    ["⬅", "➡", "⬆", "⬇"],
]


def size_of(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        return image.size


async def press(world: World, message: Message, action: str, user: object) -> Interaction:
    return await world.server.click(message, button_id(message, action), user=user)


async def used(world: World, user_id: int) -> int:
    async with read_ledger(world.tmp) as ledger:
        return (await ledger.user_status(world.guild.id, user_id)).used


async def test_a_grid_then_upscale_and_variations(world: World) -> None:
    alice = world.alice
    interaction = await world.server.invoke(
        "imagine", user=alice, options={"prompt": "four owls", "count": 4, "seed": 20, "steps": 3}
    )
    grid = await wait_result(interaction)
    grid_id = job_id_of(grid)
    (attachment,) = grid.attachments  # one 2x2 grid, not four files
    assert attachment.filename.endswith("-grid.png") and size_of(attachment.data) == (128, 128)
    assert labels(grid) == ["U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4", "Reroll", "Delete"]
    assert await used(world, alice.id) == 4

    # Someone else may not upscale it.
    refused = await press(world, grid, "u1", world.bob)
    note = await refused.wait_for_original(lambda m: m is not grid)
    assert refused.ephemeral and "Only the person who asked" in note.content

    upscale = await press(world, grid, "u1", alice)  # U2
    big = await wait_result(upscale)
    (image,) = big.attachments
    assert size_of(image.data) == (128, 128)  # the 64x64 image at twice its size
    params = read_parameters(image.data)
    assert params is not None and params.seed == 21 and params.prompt == "four owls"
    assert params.denoising_strength == 0.35
    assert ("Source", f"job {grid_id}, image 2") in params.extra
    assert rows(big) == [
        VARY_ROW,
        *CANVAS_ROWS,
        ["Fix hands", "Delete"],  # where a hand detector is configured
    ]
    assert await used(world, alice.id) == 4 + UPSCALE_COST
    # An upscale offers no Reroll and no Upscale: forged onto it, neither runs (a Reroll made
    # another upscale for the price of one image, recorded as an ordinary image).
    ref = button_id(big, "delete").split(":", 2)[2]  # "<job id>:<key>"
    for code in ("reroll", "u0"):
        forged = await world.server.click(big, f"imagine:{code}:{ref}", user=alice, validate=False)
        note = await forged.wait_for_original(lambda m: m is not big)
        assert forged.ephemeral and "offers no" in note.content, note.content
        assert result_of(forged) is None
    # Describing is off on this bot: a Describe forged onto it says so, privately.
    forged = await world.server.click(big, f"imagine:ds0:{ref}", user=alice, validate=False)
    note = await forged.wait_for_original(lambda m: m is not big)
    assert forged.ephemeral and "Describing pictures is off" in note.content, note.content
    assert await used(world, alice.id) == 4 + UPSCALE_COST

    vary = await press(world, grid, "vx0", alice)  # V1
    variations = await wait_result(vary)
    (varied,) = variations.attachments
    assert varied.filename.endswith("-grid.png")
    first = read_parameters(varied.data)
    assert first is not None and first.denoising_strength == 0.7 and first.seed != 20
    # Variations of the upscale are made at the model's native size, as /imagine makes them:
    # not four images at four times the pixels for the price of four.
    again = await wait_result(await press(world, big, "vx0", alice))
    params = read_parameters(again.attachments[0].data)
    assert params is not None and (params.width, params.height) == (64, 64)
    assert size_of(again.attachments[0].data) == (128, 128)  # a 2x2 grid of 64x64
    async with read_ledger(world.tmp) as ledger:
        up = await job_of(ledger, job_id_of(big))
        assert up.status is JobStatus.DONE
        up = up.request
        assert (up.kind, up.source_job_id, up.source_index) == (JobKind.UPSCALE, grid_id, 1)
        assert up.image_count == UPSCALE_COST
        var = (await job_of(ledger, job_id_of(variations))).request
        assert (var.kind, var.source_index, var.image_count) == (JobKind.VARIATION, 0, 4)
        var = (await job_of(ledger, job_id_of(again))).request
        assert (var.width, var.height, var.image_count) == (64, 64, 4)
    assert await used(world, alice.id) == 4 + UPSCALE_COST + 4 + 4


async def test_one_image_offers_upscale_and_both_variations(world: World) -> None:
    """Also: a press that arrives between the result's post and the bot recording it (the
    database busy for that moment) acts on the result, not refused as another message's."""
    busy: list[sqlite3.Connection] = []

    def lock_the_database(_post: object) -> None:
        database = sqlite3.connect(world.tmp / "imagine.db", isolation_level=None)
        database.execute("BEGIN IMMEDIATE")  # the bot's writes wait; its reads go on
        busy.append(database)

    world.server.before_answering(
        "POST", r"^/webhooks/\d+/[^/]+$", lock_the_database, when=lambda post: bool(post.files)
    )
    interaction = await world.server.invoke(
        "imagine", user=world.bob, options={"prompt": "one heron", "steps": 3}
    )
    single = await wait_result(interaction)
    assert rows(single) == [
        [
            "Upscale (subtle)",
            "Upscale (creative)",
            "Vary (subtle)",
            "Vary (strong)",
            "Vary (Region)",
        ],
        *CANVAS_ROWS,
        ["Fix hands", "Reroll", "Delete"],
    ]
    (database,) = busy  # the result is posted, and the bot cannot record it yet
    waits = len(world.bot.lines)
    pressed = await press(world, single, "vs0", world.bob)
    await pressed.wait_for_response()
    # Held until the bot has waited out its busy timeout once: long past the press's read.
    await world.server.wait_until(
        lambda: any("database locked" in line for line in world.bot.lines[waits:]),
        timeout=30,
        what="the bot to find its database locked",
    )
    database.execute("ROLLBACK")
    database.close()
    subtle = await wait_result(pressed)
    params = read_parameters(subtle.attachments[0].data)
    assert params is not None and params.denoising_strength == 0.35


def png_of(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def rgb(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), np.int16)


async def test_zoom_out_pan_and_vary_region_on_one_image(world: World) -> None:
    """Zoom Out 2x: the picture at half its size in the middle of a canvas twice as wide
    and tall (the model's area), its middle exactly the source's beyond the blended seam,
    and so is its Reroll's (the mask is kept); Pan left: a wider picture whose right part
    is the source; Vary (Region) through its modal: only the part the region model finds
    (computed here as the engine does) changes, to the words given. Each charged by the
    pixels it made; another member's press, a bad factor and words that find nothing are
    refused privately for nothing."""
    alice, bob, server = world.alice, world.bob, world.server
    asked = {"prompt": "a kite", "seed": 3, "steps": 3}
    single = await wait_result(await server.invoke("imagine", user=alice, options=asked))
    source_id = job_id_of(single)
    kite = rgb(single.attachments[0].data)
    picture = Image.fromarray(kite.astype(np.uint8))
    before = await used(world, alice.id)

    refused = await press(world, single, "zo0", bob)
    note = await refused.wait_for_original(lambda m: m is not single)
    assert refused.ephemeral and "Only the person who asked" in note.content, note.content
    assert result_of(refused) is None and await used(world, alice.id) == before

    made = zoom_out(picture, 2.0)  # validation fits canvas and mask to the model's 64x64
    canvas = np.asarray(ImageOps.fit(made.picture, (64, 64), Image.Resampling.LANCZOS), np.int16)
    kept = np.asarray(blurred(fitted_mask(made.mask, 64, 64), 4)) == 0  # beyond the blend
    assert kept[26:38, 26:38].all() and not kept[:16].any()  # the source's 32x32 middle
    zoomed = await wait_result(await press(world, single, "zo0", alice))
    again = await wait_result(await press(world, zoomed, "reroll", alice))
    for message in (zoomed, again):
        out = rgb(message.attachments[0].data)
        assert out.shape == (64, 64, 3) and (out[kept] == canvas[kept]).all()
        assert np.abs(out[:8] - canvas[:8]).mean() > 10  # a new border
        params = read_parameters(message.attachments[0].data)
        assert params is not None and params.prompt == "a kite"
        assert ("Zoom out", "2") in params.extra and ("Mask blur", "4") in params.extra
        assert ("Source", f"job {source_id}, image 1") in params.extra
    assert rows(zoomed)[1:3] == CANVAS_ROWS  # a zoom can be zoomed again
    assert await used(world, alice.id) == before + 2  # 64x64: one native area each

    panned = await wait_result(await press(world, single, "pl0", alice))
    out = rgb(panned.attachments[0].data)
    assert out.shape == (64, 96, 3)
    assert (out[:, 46:] == kite[:, 14:]).all()  # the source, on the right
    assert np.abs(out[:, :16] - kite[:, :16]).mean() > 10  # new on the left
    params = read_parameters(panned.attachments[0].data)
    assert params is not None and ("Outpainting direction", "left") in params.extra
    assert await used(world, alice.id) == before + 2 + 2  # 96x64: two native areas

    factor = await press(world, single, "zc0", alice)
    await factor.wait_for_response()
    assert factor.modal is not None and factor.modal["title"] == "Custom Zoom"
    typed = await server.submit_modal(factor, {"factor": "9"})
    note = await typed.wait_for_original()
    assert typed.ephemeral and "Zoom out by 1.1 to 4 times, not 9" in note.content, note.content

    helpers = Helpers(EngineConfig(cache_dir=world.model_cache, region_model=REGION_MODEL))
    mask = region_mask(helpers.segment(picture, "the hat"), picture.size)
    assert mask is not None
    region = await press(world, single, "rg0", alice)
    await region.wait_for_response()
    assert region.modal is not None and region.modal["title"] == "Vary (Region)"
    answered = await server.submit_modal(region, {"where": "the hat", "what": "a red cap"})
    varied = await wait_result(answered)
    changed = np.abs(rgb(varied.attachments[0].data) - kite)
    kept = np.asarray(blurred(mask, 4)) == 0
    assert changed.mean() > 0.5 and (changed[kept] == 0).all()
    params = read_parameters(varied.attachments[0].data)
    assert params is not None and params.prompt == "a red cap"
    assert await used(world, alice.id) == before + 2 + 2 + 1

    # Show mask: only on what a mask made, to its requester alone, privately and free: the
    # very mask the region model found (white made anew); forged onto an /imagine, refused.
    assert rows(varied)[-1] == ["Fix hands", "Reroll", "Delete", "Show mask"]
    assert all("Show mask" not in row for row in rows(single))
    shown = await press(world, varied, "mask", bob)
    note = await shown.wait_for_original(lambda m: m is not varied)
    assert shown.ephemeral and "can see their mask" in note.content, note.content
    shown = await press(world, varied, "mask", alice)
    answer = await shown.wait_for_original(lambda m: m is not varied, timeout=JOB_TIMEOUT)
    assert answer.ephemeral and f"job #{job_id_of(varied)}" in answer.content, answer.content
    with Image.open(io.BytesIO(answer.attachments[0].data)) as got:
        assert (np.asarray(got.convert("L")) == np.asarray(mask)).all()
    ref = button_id(single, "reroll").split(":", 2)[2]
    forged = await world.server.click(single, f"imagine:mask:{ref}", user=alice, validate=False)
    note = await forged.wait_for_original(lambda m: m is not single)
    assert forged.ephemeral and "offers no Show mask" in note.content, note.content
    assert await used(world, alice.id) == before + 2 + 2 + 1

    region = await press(world, single, "rg0", alice)
    await region.wait_for_response()
    answered = await server.submit_modal(region, {"where": "  ", "what": "a red cap"})
    note = await answered.wait_for_original()
    assert answered.ephemeral and "Say which part of the picture" in note.content, note.content
    assert result_of(answered) is None
    region = await press(world, single, "rg0", bob)  # the modal opens; its answer is refused
    await region.wait_for_response()
    answered = await server.submit_modal(region, {"where": "the hat", "what": "a red cap"})
    note = await answered.wait_for_original()
    assert answered.ephemeral and "Only the person who asked" in note.content, note.content
    assert result_of(answered) is None
    assert await used(world, alice.id) == before + 2 + 2 + 1

    # /inpaint: a mask drawn on the picture (the tiny CLIPSeg above marks all of a 64x64
    # picture, so here the kept part is the mask's black).
    hat = Image.new("L", (64, 64), 0)
    hat.paste(255, (16, 0, 48, 24))
    files = {
        "image": AttachmentOption("kite.png", single.attachments[0].data, "image/png"),
        "mask": AttachmentOption("hat.png", png_of(hat), "image/png"),
        "prompt": "a red cap",
    }
    masked = await wait_result(await server.invoke("inpaint", user=alice, options=files))
    changed = np.abs(rgb(masked.attachments[0].data) - kite)
    inside = np.asarray(hat) == 255
    kept = np.asarray(blurred(hat, 4)) == 0  # the blur reaches 9 rows below the hat
    assert changed[inside].mean() > 20 and (changed[kept] == 0).all() and kept[34:].all()
    assert await used(world, alice.id) == before + 2 + 2 + 1 + 1

    # Upscale (subtle): the GAN's picture alone (4x, at the 128x128 cap), exactly; (creative)
    # refines it. Both charged as an upscale.
    runpy.run_path(str(STUBS / "sitecustomize.py"))  # spandrel here too, for the GAN's own
    gan = Helpers(EngineConfig(cache_dir=world.model_cache, upscale_model=UPSCALE_MODEL))
    expected = gan.upscale(picture).resize((LARGEST, LARGEST), Image.Resampling.LANCZOS)
    subtle = await wait_result(await press(world, single, "us0", alice))
    creative = await wait_result(await press(world, single, "uc0", alice))
    assert (rgb(subtle.attachments[0].data) == np.asarray(expected, np.int16)).all()
    params = read_parameters(subtle.attachments[0].data)
    assert params is not None and params.denoising_strength is None and params.seed == 3
    assert ("Postprocess upscaler", "tiny-esrgan") in params.extra
    assert ("Source", f"job {source_id}, image 1") in params.extra
    refined = read_parameters(creative.attachments[0].data)
    assert refined is not None and refined.denoising_strength == 0.35
    assert ("Hires upscaler", "tiny-esrgan") in refined.extra
    assert size_of(creative.attachments[0].data) == (LARGEST, LARGEST)
    differ = np.abs(rgb(creative.attachments[0].data) - rgb(subtle.attachments[0].data))
    assert differ.mean() > 1  # the refinement changed the GAN's picture
    assert await used(world, alice.id) == before + 2 + 2 + 1 + 1 + 2 * UPSCALE_COST

    async with read_ledger(world.tmp) as ledger:
        for message, kind, charged in (
            (zoomed, JobKind.ZOOM, 1),
            (panned, JobKind.PAN, 2),
            (varied, JobKind.REGION, 1),
            (subtle, JobKind.UPSCALE, UPSCALE_COST),
            (creative, JobKind.UPSCALE, UPSCALE_COST),
        ):
            job = await job_of(ledger, job_id_of(message))
            assert job.status is JobStatus.DONE
            request = job.request
            assert (request.kind, request.source_job_id, request.source_index) == (
                kind,
                source_id,
                0,
            )
            assert request.image_count == charged
        rerolled = (await job_of(ledger, job_id_of(again))).request
        assert (rerolled.kind, rerolled.reroll_of) == (JobKind.ZOOM, job_id_of(zoomed))
        assert (await job_of(ledger, job_id_of(subtle))).request.steps == 0  # the GAN alone
        drawn = (await job_of(ledger, job_id_of(masked))).request
        assert (drawn.kind, drawn.source_job_id, drawn.image_count) == (JobKind.REGION, None, 1)


async def test_fix_faces_on_one_image(world: World) -> None:
    """Fix faces: the faces the detector finds (computed here as the engine does) made again
    "Only masked" at ADetailer's strength; beyond their masks' blur every pixel is the
    source's, and so is its Reroll's (the mask is kept, the inpaint area too). Charged by the
    pixels made; another member's press is refused privately for nothing."""
    carol, bob, server = world.carol, world.bob, world.server
    asked = {"prompt": "a portrait", "seed": 6, "steps": 3}
    single = await wait_result(await server.invoke("imagine", user=carol, options=asked))
    assert rows(single)[1] == CANVAS_ROWS[0]
    source_id = job_id_of(single)
    own = rgb(single.attachments[0].data)
    picture = Image.fromarray(own.astype(np.uint8))
    before = await used(world, carol.id)

    refused = await press(world, single, "ff0", bob)
    note = await refused.wait_for_original(lambda m: m is not single)
    assert refused.ephemeral and "Only the person who asked" in note.content, note.content
    assert result_of(refused) is None and await used(world, carol.id) == before

    detector = Helpers(EngineConfig(cache_dir=world.model_cache, fix_detector=FIX_DETECTOR))
    mask = fix_canvas(picture, detector.detect(picture)).mask
    kept = np.asarray(blurred(mask, 4)) == 0
    inside = np.asarray(mask) > 0
    assert kept.sum() > 1000 and inside.any()
    fixed = await wait_result(await press(world, single, "ff0", carol))
    again = await wait_result(await press(world, fixed, "reroll", carol))
    for message in (fixed, again):
        out = rgb(message.attachments[0].data)
        assert out.shape == own.shape and (out[kept] == own[kept]).all()
        assert np.abs(out[inside] - own[inside]).mean() > 3  # the face made again
        params = read_parameters(message.attachments[0].data)
        assert params is not None and params.prompt == "a portrait"
        assert params.denoising_strength == FIX_STRENGTH
        assert ("Inpaint area", "Only masked") in params.extra
        assert ("ADetailer model", "tiny-face-detector") in params.extra
    assert await used(world, carol.id) == before + 2  # 64x64: one native area each
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id_of(fixed))
        assert job.status is JobStatus.DONE
        request = job.request
        assert (request.kind, request.source_job_id, request.image_count) == (
            JobKind.FIX,
            source_id,
            1,
        )
        rerolled = (await job_of(ledger, job_id_of(again))).request
        assert (rerolled.kind, rerolled.reroll_of) == (JobKind.FIX, job_id_of(fixed))


async def test_imagine_fix_faces_is_one_job_charged_once_that_survives_a_restart(
    world: World,
) -> None:
    """`/imagine fix:faces`: the image `/imagine` makes, then its face (found as the engine
    finds it) made again "Only masked": beyond the mask's blur every pixel is the plain
    image's. One job, charged once: the image and its fix (64x64: one native area), kept in
    the ledger so a Reroll fixes again. Killed while fixing, the bot makes it again at the
    next start and posts it once, the same picture. `fix:both` fixes the hand too (the
    detectors' second unit in the PNG), at the same price; so does the Fix hands button,
    alone."""
    carol, server = world.carol, world.server
    asked = {"prompt": "a slow portrait", "seed": 9, "steps": 40}
    plain = await wait_result(await server.invoke("imagine", user=carol, options=asked))
    own = rgb(plain.attachments[0].data)
    picture = Image.fromarray(own.astype(np.uint8))
    detector = Helpers(EngineConfig(cache_dir=world.model_cache, fix_detector=FIX_DETECTOR))
    mask = fix_canvas(picture, detector.detect(picture)).mask
    kept, inside = np.asarray(blurred(mask, 4)) == 0, np.asarray(mask) > 0
    assert kept.sum() > 1000 and inside.any()
    before = await used(world, carol.id)

    fixed = await wait_result(
        await server.invoke("imagine", user=carol, options={**asked, "fix": "faces"})
    )
    job_id = job_id_of(fixed)
    again = await wait_result(await press(world, fixed, "reroll", carol))
    # Killed once the face is being fixed (the image is made): made again at the next start.
    killed = await server.invoke("imagine", user=carol, options={**asked, "fix": "faces"})
    progress = await killed.wait_for_message(lambda m: bool(m.custom_ids))
    killed_id = job_id_of(progress)
    await world.bot.wait_for_line(rf"job {killed_id}: fixing faces in 1 of 1", within=60)
    world.bot.unwatch()
    world.bot.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    assert await world.bot.exited() == -signal.SIGKILL
    async with read_ledger(world.tmp) as ledger:
        assert (await job_of(ledger, killed_id)).status in ACTIVE_STATUSES
    await world.start_bot(pythonpath=[STUBS])
    await world.bot.wait_for_line(rf"job {killed_id}: delivered", within=JOB_TIMEOUT)
    (resumed,) = world.results_for(killed_id)

    out = rgb(fixed.attachments[0].data)
    assert out.shape == own.shape and (out[kept] == own[kept]).all()
    assert np.abs(out[inside] - own[inside]).mean() > 3  # the face made again
    assert resumed.attachments[0].data == fixed.attachments[0].data  # the same, once
    params = read_parameters(fixed.attachments[0].data)
    assert params is not None and (params.prompt, params.seed) == ("a slow portrait", 9)
    assert params.denoising_strength is None  # the image's own parameters, then ADetailer's
    assert ("ADetailer model", "tiny-face-detector") in params.extra
    assert ("ADetailer denoising strength", f"{FIX_STRENGTH:g}") in params.extra
    rerolled = read_parameters(again.attachments[0].data)
    assert rerolled is not None and ("Faces fixed", "1") in rerolled.extra
    assert await used(world, carol.id) == before + 3 * 2  # each: one image and one fix
    async with read_ledger(world.tmp) as ledger:
        for one in (job_id, job_id_of(again), killed_id):
            job = await job_of(ledger, one)
            assert job.status is JobStatus.DONE
            assert (job.request.fix, job.request.image_count) == ("faces", 2)
        assert (await job_of(ledger, job_id_of(again))).request.reroll_of == job_id

    hands = EngineConfig(cache_dir=world.model_cache, fix_hands_detector=HANDS_DETECTOR)
    hand = fix_canvas(picture, Helpers(hands).detect(picture, "hands"), what="hands").mask
    hand_in = np.asarray(hand) > 0
    assert hand_in.any() and not (hand_in & inside).any()  # a hand apart from the face
    both = await wait_result(
        await server.invoke("imagine", user=carol, options={**asked, "fix": "both"})
    )
    button = await wait_result(await press(world, plain, "fh0", carol))  # Fix hands
    for message, made in ((both, inside | hand_in), (button, hand_in)):
        out = rgb(message.attachments[0].data)
        untouched = np.asarray(blurred(Image.fromarray((made * 255).astype(np.uint8)), 4)) == 0
        assert (out[untouched] == own[untouched]).all()
        assert np.abs(out[hand_in] - own[hand_in]).mean() > 3  # the hand made again
    assert np.abs(rgb(both.attachments[0].data)[inside] - own[inside]).mean() > 3
    params = read_parameters(both.attachments[0].data)
    assert params is not None and ("ADetailer model 2nd", "tiny-hand-detector") in params.extra
    assert {("Faces fixed", "1"), ("Hands fixed", "1")} <= set(params.extra)
    params = read_parameters(button.attachments[0].data)
    assert params is not None and ("ADetailer model", "tiny-hand-detector") in params.extra
    assert await used(world, carol.id) == before + 4 * 2 + 1  # and the button: 64x64, one


async def test_a_cancelled_upscale_gives_its_cost_back(world: World) -> None:
    carol = world.carol
    interaction = await world.server.invoke(
        "imagine", user=carol, options={"prompt": "a slow fox", "steps": 50}
    )
    single = await wait_result(interaction)
    before = await used(world, carol.id)
    upscale = await press(world, single, "uc0", carol)  # Upscale (creative): GAN, refined
    progress = await upscale.wait_for_message(lambda m: bool(m.custom_ids))
    job_id = job_id_of(progress)  # cancelled at once: queued or running, never finished
    cancel = await world.server.click(progress, button_id(progress, "cancel"), user=carol)
    await cancel.wait_for_response()
    await world.bot.wait_for_line(rf"job {job_id}: cancelled", within=60)
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id)
        assert job.request.kind is JobKind.UPSCALE and job.status is JobStatus.CANCELLED
    assert await used(world, carol.id) == before  # the upscale's cost came back


async def test_a_prompt_that_reads_like_a_png_field_is_upscaled(world: World) -> None:
    """The upscale takes its prompt from the ledger, not from the PNG's text read back (where
    a prompt starting "Negative prompt:" reads as an empty prompt and a negative one)."""
    prompt = "Negative prompt: a heron"
    asked = {"prompt": prompt, "steps": 2, "seed": 5}
    single = await wait_result(await world.server.invoke("imagine", user=world.bob, options=asked))
    pressed = await press(world, single, "uc0", world.bob)
    first = await pressed.wait_for_original(lambda m: m is not single)
    assert first.custom_ids, first.content  # its progress (Cancel), not a refusal
    big = await wait_result(pressed)
    async with read_ledger(world.tmp) as ledger:
        up = (await job_of(ledger, job_id_of(big))).request
        assert (up.kind, up.prompt, up.seed) == (JobKind.UPSCALE, prompt, 5)


async def test_a_zoom_cut_off_by_a_crash_is_made_after_the_restart(world: World) -> None:
    """A zoom's canvas and mask are kept before it is queued: a bot killed before it is made
    makes it again at the next start, from the same canvas, once, charged once."""
    bob = world.bob
    asked = {"prompt": "a slow lighthouse", "seed": 4, "steps": 50}
    single = await wait_result(await world.server.invoke("imagine", user=bob, options=asked))
    picture = Image.open(io.BytesIO(single.attachments[0].data)).convert("RGB")
    before = await used(world, bob.id)
    zoom = await press(world, single, "zh0", bob)  # Zoom Out 1.5x, 50 steps as its source
    progress = await zoom.wait_for_message(lambda m: bool(m.custom_ids))
    job_id = job_id_of(progress)  # killed at once: queued or running, not finished (checked)
    world.bot.unwatch()
    world.bot.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    assert await world.bot.exited() == -signal.SIGKILL
    async with read_ledger(world.tmp) as ledger:
        assert (await job_of(ledger, job_id)).status in ACTIVE_STATUSES

    await world.start_bot(pythonpath=[STUBS])
    await world.bot.wait_for_line(rf"job {job_id}: delivered", within=JOB_TIMEOUT)
    (result,) = world.results_for(job_id)
    made = zoom_out(picture, 1.5)
    canvas = np.asarray(ImageOps.fit(made.picture, (64, 64), Image.Resampling.LANCZOS), np.int16)
    kept = np.asarray(blurred(fitted_mask(made.mask, 64, 64), 4)) == 0
    assert kept.any() and (rgb(result.attachments[0].data)[kept] == canvas[kept]).all()
    params = read_parameters(result.attachments[0].data)
    assert params is not None and ("Zoom out", "1.5") in params.extra
    assert await used(world, bob.id) == before + 1


async def test_buttons_of_a_grid_work_after_a_restart(world: World) -> None:
    interaction = await world.server.invoke(
        "imagine", user=world.alice, options={"prompt": "four wrens", "count": 4, "steps": 2}
    )
    grid = await wait_result(interaction)
    await world.bot.stop()
    await world.start_bot(pythonpath=[STUBS])
    big = await wait_result(await press(world, grid, "u3", world.alice))  # U4
    params = read_parameters(big.attachments[0].data)
    assert params is not None and size_of(big.attachments[0].data) == (128, 128)
    assert ("Source", f"job {job_id_of(grid)}, image 4") in params.extra


async def test_models_and_loras_chosen_from_discord(world: World) -> None:
    bob, server = world.bob, world.server
    typed = await server.autocomplete(
        "imagine", user=bob, focused="model", options={"prompt": "a fox", "model": "oth"}
    )
    await typed.wait_for_response()
    assert typed.autocomplete_choices == [{"name": "other — other weights", "value": "other"}]
    listing = await server.invoke("models", user=bob)
    text = (await listing.wait_for_original()).content
    assert listing.ephemeral and re.search(r"\*\*tiny\*\* \(default\) · loaded \(\d+ MiB\)", text)
    assert "**other** · not loaded" in text and "`<lora:ink:0.8>`" in text

    before = await used(world, bob.id)
    for options, why in (
        ({"prompt": "a fox", "model": "nope"}, "There is no model called 'nope'"),
        ({"prompt": "a fox <lora:zz>"}, "There is no LoRA called 'zz'"),
        ({"prompt": "a fox <lora:ink>"}, "does not fit the model tiny"),
        ({"prompt": "a (fox:1.2.3)", "model": "other"}, "not a number"),
    ):
        refused = await server.invoke("imagine", user=bob, options=options)
        note = await refused.wait_for_original()
        assert refused.ephemeral and why in note.content, note.content
    assert await used(world, bob.id) == before  # refusals cost nothing

    asked = await server.invoke(
        "imagine",
        user=bob,
        options={"prompt": "a (fox:1.3) in snow <lora:ink>", "model": "other", "steps": 3},
    )
    result = await wait_result(asked)
    params = read_parameters(result.attachments[0].data)
    assert params is not None and params.model == "other"
    assert params.prompt == "a (fox:1.3) in snow <lora:ink:0.8>"  # as A1111 writes it
    assert dict(params.extra).get("Model hash")
    fields = {f["name"]: f["value"] for f in result.embeds[0]["fields"]}
    assert fields["Model"] == "other" and fields["LoRAs"] == "ink 0.8"
    assert await used(world, bob.id) == before + 1

    # A reroll keeps the model and the LoRA (the ledger stores both).
    again = await wait_result(await press(world, result, "reroll", bob))
    rerolled = read_parameters(again.attachments[0].data)
    assert rerolled is not None and rerolled.model == "other"
    assert rerolled.prompt == params.prompt and rerolled.seed != params.seed
    async with read_ledger(world.tmp) as ledger:
        job = (await job_of(ledger, job_id_of(again))).request
        assert job.model == "other" and job.prompt == params.prompt


async def test_aspect_ratio_and_shape_from_discord(world: World) -> None:
    """`ar:` and `size:` are resolved once, by the engine, for the request's model: the
    request `check` returns is the one queued (a second validation once refused every `ar:`)."""
    carol, server = world.carol, world.server
    before = await used(world, carol.id)
    wide = await wait_result(
        await server.invoke(
            "imagine", user=carol, options={"prompt": "a wide valley", "ar": "16:9", "steps": 2}
        )
    )
    assert size_of(wide.attachments[0].data) == (112, 64)  # 16:9 near the 64² native area
    tall = await wait_result(
        await server.invoke(
            "imagine", user=carol, options={"prompt": "a tall tower", "size": "portrait"}
        )
    )
    assert size_of(tall.attachments[0].data) == (64, 96)
    again = await wait_result(await press(world, wide, "reroll", carol))
    assert size_of(again.attachments[0].data) == (112, 64)  # the ledger keeps the size
    assert await used(world, carol.id) == before + 3

    both = await server.invoke(
        "imagine", user=carol, options={"prompt": "a fox", "ar": "16:9", "size": "square"}
    )
    note = await both.wait_for_original()
    assert both.ephemeral and "not both" in note.content, note.content
    assert await used(world, carol.id) == before + 3  # refused: nothing charged


async def test_quality_fast_runs_through_the_models_step_cache(world: World) -> None:
    """`quality:fast` makes the request through its model's step cache (DeepCache on "tiny"):
    the PNG says so, and the image differs from the full-quality one of the same seed, at the
    same price; a model without a cache refuses it and charges nothing."""
    carol, server = world.carol, world.server
    listing = await server.invoke("models", user=carol)
    text = (await listing.wait_for_original()).content
    offered = [line for line in text.splitlines() if "quality:fast" in line]
    assert len(offered) == 1 and text.index(offered[0]) < text.index("**other**"), text
    before = await used(world, carol.id)
    options = {"prompt": "a quick sketch", "seed": 7, "steps": 6}
    fast = await wait_result(
        await server.invoke("imagine", user=carol, options={**options, "quality": "fast"})
    )
    full = await wait_result(await server.invoke("imagine", user=carol, options=options))
    cached, plain = (read_parameters(m.attachments[0].data) for m in (fast, full))
    assert cached is not None and plain is not None
    assert ("Step cache", "deepcache (interval 3, branch 0)") in cached.extra
    assert "Step cache" not in dict(plain.extra) and cached.seed == plain.seed
    assert fast.attachments[0].data != full.attachments[0].data
    assert await used(world, carol.id) == before + 2

    refused = await server.invoke(
        "imagine", user=carol, options={**options, "quality": "fast", "model": "other"}
    )
    note = await refused.wait_for_original()
    assert refused.ephemeral and "has no fast mode" in note.content, note.content
    assert await used(world, carol.id) == before + 2


async def test_a_short_flux_request_joins_a_long_one_and_is_posted_first(world: World) -> None:
    """Two members on a FLUX.1 model at once (a diffusion transformer, batched across users
    step by step): the short request joins the long one's ticks and leaves first. Its A1111
    weight reaches FLUX.1's T5 embeddings: no note that weights were taken out."""
    alice, bob, server = world.alice, world.bob, world.server
    listing = await server.invoke("models", user=bob)
    text = (await listing.wait_for_original()).content
    assert "**flux** · " in text and "FLUX.1 · " in text and "no negative prompt" in text
    assert "no prompt weights" not in text.split("**flux**")[1].split("\n**")[0]
    # In batch scheduling the short one would wait for the whole long call (other steps).
    long = await server.invoke(
        "imagine", user=alice, options={"prompt": "a long road", "model": "flux", "steps": 50}
    )
    short = await server.invoke(
        "imagine",
        user=bob,
        options={
            "prompt": "a short (red:1.4) walk",
            "negative": "rain",
            "model": "flux",
            "steps": 2,
        },
    )
    quick = await wait_result(short)
    assert result_of(long) is None  # the long one is still running
    assert "does not read a negative prompt" in quick.content
    assert "prompt weights" not in quick.content, quick.content
    slow = await wait_result(long)
    assert quick.id < slow.id
    for message, steps in ((quick, 2), (slow, 50)):
        params = read_parameters(message.attachments[0].data)
        assert params is not None and params.model == "flux" and params.steps == steps
        assert params.negative_prompt == ""  # not read, so not recorded either
    weighted = read_parameters(quick.attachments[0].data)
    assert weighted is not None and weighted.prompt == "a short (red:1.4) walk"


async def test_an_image_at_the_size_cap_offers_no_upscale_and_is_not_charged_one(
    world: World,
) -> None:
    """An upscale at the size cap would re-render the image at its own size for the
    upscale's price: not offered, and refused when forged, charged nothing. (Last: it uses
    the model the test before loaded.)"""
    carol = world.carol
    asked = {"prompt": "a wide bay", "model": "other", "steps": 2}  # LARGEST x LARGEST
    result = await wait_result(await world.server.invoke("imagine", user=carol, options=asked))
    assert labels(result)[:2] == ["Vary (subtle)", "Vary (strong)"]
    assert not [label for label in labels(result) if label.startswith("Upscale")]
    assert labels(result)[-2:] == ["Reroll", "Delete"]
    before = await used(world, carol.id)
    ref = button_id(result, "delete").split(":", 2)[2]
    forged = await world.server.click(result, f"imagine:u0:{ref}", user=carol, validate=False)
    note = await forged.wait_for_original(lambda m: m is not result)
    assert forged.ephemeral and "already at the largest size" in note.content, note.content
    assert result_of(forged) is None and await used(world, carol.id) == before
