"""`/imagine image:<attachment>`, `/edit` and `/describe image:<attachment>` end to end: the
real bot, the Discord-compatible server serving the attachment from its CDN-like route, the
database and the image store read back; the Edit button's modal, submitted, and pressed again
after a restart; `/describe` with the random-weight `builtin:tiny-florence2`, `style:tags`
with `builtin:tiny-tagger`, and a result's Describe button.

Every bad attachment gets one clear private message and costs nothing; a URL off Discord's
servers is never fetched (a decoy HTTP server counts the requests it gets).
"""

from __future__ import annotations

import asyncio
import io
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from PIL import Image, ImageOps

from bot.ledger import ACTIVE_STATUSES, JobKind, JobRef, JobStatus, RefusalReason
from bot.presentation.describe import prompts_of
from engine import read_parameters
from testkit.discord_server import AttachmentOption, Message
from testkit.jobs import JOB_TIMEOUT, button_id, job_id_of, job_of, read_ledger, wait_result
from testkit.ops import buckets_above, ops_address, read_metrics
from testkit.pictures import GRAY, png_bytes
from testkit.tagger import top_tags
from testkit.world import NewWorld, World

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("clean_world")]

LIMIT_MB = 0.05  # [images] max_picture_mb: 52 428 bytes
MEMBERS = tuple(f"member{i}" for i in range(10))


def png(size: tuple[int, int], colour: str = "teal", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


def noisy_png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 80).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="GIF")
    return buf.getvalue()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(new_world: NewWorld) -> AsyncIterator[World]:
    users = ("alice", "bob", "carol", "dora", "emil", "finn", *MEMBERS)
    async with new_world(guild="Picture Club", users=users) as world:
        world.configure(
            images={"max_picture_mb": LIMIT_MB},
            ops={"listen": "127.0.0.1:0"},
            engine={"default_model": "tiny"},
            models={  # `kontext` edits by instruction (and is the first model that does)
                "tiny": {"source": "builtin:tiny"},
                "kontext": {"source": "builtin:tiny-flux-kontext", "steps": 2},
            },
            describe={"model": "builtin:tiny-florence2", "tagger": "builtin:tiny-tagger"},
            moderation={"blocked_words": ["hatsune miku"]},  # a tag of the tiny tagger's
        )
        async with world.running_bot() as bot:
            world.ops = await ops_address(bot)
            yield world


async def test_imagine_from_an_attachment_keeps_its_aspect_and_stores_the_picture(
    world: World,
) -> None:
    picture = AttachmentOption("beach.png", noisy_png((120, 60)), "image/png")
    interaction = await world.server.invoke(
        "imagine",
        user=world.alice,
        options={"prompt": "a beach at dawn", "image": picture, "strength": 0.5, "steps": 4},
    )
    result = await wait_result(interaction)
    job_id = job_id_of(result)
    params = read_parameters(result.attachments[0].data)
    assert params is not None and params.denoising_strength == 0.5
    assert params.width > params.height and params.width % 8 == 0  # 2:1 kept (not square)
    assert world.server.requests_to("GET", r"^/attachments/")  # fetched from the "CDN"
    # The job is marked done just after its result is posted: wait for the bot to say so.
    await world.bot.wait_for_line(rf"job {job_id}: delivered", within=JOB_TIMEOUT)
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id)
        assert job.status is JobStatus.DONE and job.request.strength == 0.5
    stored = world.tmp / "imagine-bot-images" / "inputs" / f"{job_id}-{JobRef.of(job).key}.png"
    with Image.open(stored) as kept:
        assert kept.size == (params.width, params.height)  # what the pipeline started from


async def test_a_16_bit_picture_starts_from_its_own_tones_not_white(world: World) -> None:
    """A 16-bit grayscale PNG (Pillow's I;16, which `convert("RGB")` clips to white) is scaled
    to 8 bits: the picture the job starts from is the gradient, as a viewer shows it."""
    levels = np.tile(np.arange(64, dtype=np.uint32) * 4, (64, 1))  # 0..252, left to right
    picture = AttachmentOption("scan.png", png_bytes(levels * 257, GRAY, 16), "image/png")
    interaction = await world.server.invoke(
        "imagine",
        user=world.carol,
        options={"prompt": "an old scan", "image": picture, "strength": 0.5, "steps": 2},
    )
    result = await wait_result(interaction)
    job_id = job_id_of(result)
    await world.bot.wait_for_line(rf"job {job_id}: delivered", within=JOB_TIMEOUT)
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id)
    stored = world.tmp / "imagine-bot-images" / "inputs" / f"{job_id}-{JobRef.of(job).key}.png"
    with Image.open(stored) as kept:
        expected = Image.fromarray(levels.astype(np.uint8)).convert("RGB")
        if kept.size != expected.size:  # fitted to the request's size as the bot fits it
            expected = ImageOps.fit(expected, kept.size, Image.Resampling.LANCZOS)
        difference = np.abs(
            np.asarray(kept.convert("RGB"), dtype=np.int16) - np.asarray(expected, dtype=np.int16)
        )
    assert difference.max() <= 2, f"off by up to {difference.max()} levels of 255"


@pytest.mark.parametrize(
    ("attachment", "expected"),
    [
        (AttachmentOption("notes.txt", b"just text", "text/plain"), "not a picture"),
        (AttachmentOption("anim.gif", gif(), "image/gif"), "GIF pictures are not supported"),
        (AttachmentOption("big.png", noisy_png((200, 200)), "image/png"), "the limit is 0.05 MB"),
        (AttachmentOption("cut.png", noisy_png((64, 64))[:900], "image/png"), "damaged or cut"),
        (AttachmentOption("bomb.png", png((20000, 20000), "black", "1")), "pixels"),
    ],
    ids=["text", "gif", "too-big", "truncated", "pixel-bomb"],
)
async def test_a_bad_attachment_gets_a_clear_message_and_costs_nothing(
    world: World, attachment: AttachmentOption, expected: str
) -> None:
    async with read_ledger(world.tmp) as ledger:
        before = await ledger.user_status(world.guild.id, world.bob.id)
    interaction = await world.server.invoke(
        "imagine", user=world.bob, options={"prompt": "from a file", "image": attachment}
    )
    message = await interaction.wait_for_original()
    assert interaction.ephemeral and expected in message.content, message.content
    assert not message.custom_ids and "Traceback" not in message.content
    async with read_ledger(world.tmp) as ledger:
        after = await ledger.user_status(world.guild.id, world.bob.id)
        assert (after.used, after.queued) == (before.used, before.queued)
        refusals = await ledger.jobs_for_user(world.guild.id, world.bob.id)
        assert refusals[0].refusal_reason == RefusalReason.INVALID


async def test_an_attachment_url_off_discord_is_never_fetched(world: World) -> None:
    hits: list[str] = []

    async def decoy(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=png((64, 64)), content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", decoy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        payload = world.server.build_command_interaction(
            "imagine",
            user=world.carol,
            options={"prompt": "a forged file", "image": AttachmentOption("x.png", png((8, 8)))},
        )
        (attachment,) = payload["data"]["resolved"]["attachments"].values()
        attachment["url"] = attachment["proxy_url"] = f"http://127.0.0.1:{port}/x.png"
        interaction = await world.server.dispatch_interaction(payload)
        message = await interaction.wait_for_original()
        assert interaction.ephemeral and "not on Discord's servers" in message.content
        assert hits == []
    finally:
        await runner.cleanup()


async def test_ten_members_posting_huge_pictures_at_once_leave_the_loop_free(
    world: World,
) -> None:
    """A 15 kB PNG can hold 40 megapixels: a fraction of a second to decode and as long again
    to resize, each. Ten members post one at once: the bot decodes them on threads of its own
    (two at a time) and resizes them on the engine's checking thread, so its event loop keeps
    answering: the loop-lag probe (the bot's own metric, sampled every 50 ms) is never a
    quarter of a second late, and every picture becomes an image."""
    buf = io.BytesIO()
    Image.new("P", (6320, 6320), 3).save(buf, format="PNG")
    huge = buf.getvalue()
    assert len(huge) < LIMIT_MB * 2**20
    before = await read_metrics(world.ops)
    asked = [
        world.server.invoke(
            "imagine",
            user=world.users[name],
            options={
                "prompt": "a calm lake",
                "image": AttachmentOption("huge.png", huge, "image/png"),
                "strength": 0.5,
                "steps": 2,
            },
        )
        for name in MEMBERS
    ]
    results = await asyncio.gather(*[wait_result(await a) for a in asked])
    assert len({job_id_of(r) for r in results}) == len(MEMBERS)
    after = await read_metrics(world.ops)
    lag = "imagine_event_loop_lag_seconds"
    late = {le: buckets_above(before, after, lag, le) for le in ("0.05", "0.1", "0.25")}
    stalled, samples = late["0.25"]
    assert samples >= 20, samples  # the burst lasted long enough to be sampled
    # No stall: on the loop, the resizes stalled it for over a second at a time. (The 99th
    # percentile under 50 ms is a figure for a quiet machine: `bench/picture_burst.py`; a
    # test machine running other tests beside this one delays the loop thread now and then.)
    assert stalled == 0, f"probes late by over 50/100/250 ms, of {samples}: {late}"


async def used(world: World, user_id: int) -> int:
    async with read_ledger(world.tmp) as ledger:
        return (await ledger.user_status(world.guild.id, user_id)).used


async def test_edit_an_attachment_then_its_result_through_the_edit_button(world: World) -> None:
    """`/edit` changes the attached picture on the first model that edits, keeps its aspect
    ratio, names the instruction in the PNG and costs one image; the result's Edit button
    asks (a modal) what to change, and the submit edits that result. Another member's press
    is refused before any modal and costs nothing."""
    alice, carol = world.alice, world.carol
    before = await used(world, alice.id)
    picture = AttachmentOption("cat.png", noisy_png((120, 60)), "image/png")
    interaction = await world.server.invoke(
        "edit", user=alice, options={"image": picture, "instruction": "make it night"}
    )
    result = await wait_result(interaction)
    job_id = job_id_of(result)
    params = read_parameters(result.attachments[0].data)
    assert params is not None and params.prompt == "make it night" and params.model == "kontext"
    assert "Source hash" in dict(params.extra)
    assert params.width > params.height  # the picture's 2:1, at the model's area
    await world.bot.wait_for_line(rf"job {job_id}: delivered", within=JOB_TIMEOUT)
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id)
        assert (job.request.kind, job.request.image_count) == (JobKind.EDIT, 1)
    assert await used(world, alice.id) == before + 1
    stored = world.tmp / "imagine-bot-images" / "inputs" / f"{job_id}-{JobRef.of(job).key}.png"
    assert stored.is_file()  # a restart can run it again

    # Carol may not edit Alice's result: refused before any modal, at no cost.
    carol_before = await used(world, carol.id)
    refused = await world.server.click(result, button_id(result, "e0"), user=carol)
    note = await refused.wait_for_original(lambda m: m is not result)
    assert refused.ephemeral and "Only the person who asked" in note.content
    assert refused.modal is None and await used(world, carol.id) == carol_before

    edited = await edit_by_button(world, result, "add a moon")
    again = read_parameters(edited.attachments[0].data)
    assert again is not None and again.prompt == "add a moon"
    assert ("Source", f"job {job_id}, image 1") in again.extra
    assert again.width > again.height
    assert "e0" in {c.split(":")[1] for c in edited.custom_ids}  # an edit is editable again
    assert await used(world, alice.id) == before + 2

    # A Reroll edits the same picture again, with a new seed.
    reroll = await world.server.click(result, button_id(result, "reroll"), user=alice)
    rerolled = read_parameters((await wait_result(reroll)).attachments[0].data)
    assert rerolled is not None and rerolled.prompt == "make it night"
    assert dict(rerolled.extra)["Source hash"] == dict(params.extra)["Source hash"]
    assert await used(world, alice.id) == before + 3
    world.edited = result  # type: ignore[attr-defined]  # pressed again after a restart


async def edit_by_button(world: World, result: Message, instruction: str) -> Message:
    """Press the result's Edit button as Alice, fill the modal in, and return the edit."""
    pressed = await world.server.click(result, button_id(result, "e0"), user=world.alice)
    modal = await pressed.wait_for(lambda i: i.modal, what="the Edit modal")
    assert modal["title"] == "Edit image 1"
    submitted = await world.server.submit_modal(pressed, {"instruction": instruction})
    return await wait_result(submitted)


async def test_a_grid_offers_an_edit_and_a_describe_per_tile_a_gone_tile_refused_at_no_cost(
    world: World,
) -> None:
    interaction = await world.server.invoke(
        "imagine", user=world.carol, options={"prompt": "two boats", "count": 2, "steps": 2}
    )
    grid = await wait_result(interaction)
    job_id = job_id_of(grid)
    rows = [[c["label"] for c in row["components"]] for row in grid.components]
    assert rows[-2:] == [["E1", "E2"], ["D1", "D2"]]  # rows of their own, after U, V, Reroll
    pressed = await world.server.click(grid, button_id(grid, "e1"), user=world.carol)
    modal = await pressed.wait_for(lambda i: i.modal, what="the Edit modal")
    assert modal["title"] == "Edit image 2"

    await world.bot.wait_for_line(rf"job {job_id}: delivered", within=JOB_TIMEOUT)
    async with read_ledger(world.tmp) as ledger:
        key = JobRef.of(await job_of(ledger, job_id)).key
    (world.tmp / "imagine-bot-images" / "outputs" / f"{job_id}-{key}-0.png").unlink()
    before = await used(world, world.carol.id)
    refused = await world.server.click(grid, button_id(grid, "e0"), user=world.carol)
    note = await refused.wait_for_original(lambda m: m is not grid)
    assert refused.ephemeral and "is no longer kept" in note.content, note.content
    assert refused.modal is None and await used(world, world.carol.id) == before
    refused = await world.server.click(grid, button_id(grid, "ds0"), user=world.carol)
    note = await refused.wait_for_original(lambda m: m is not grid)
    assert refused.ephemeral and "is no longer kept" in note.content, note.content
    assert not note.custom_ids and await used(world, world.carol.id) == before


async def test_edit_refuses_a_model_that_does_not_edit_and_a_second_picture(
    world: World,
) -> None:
    before = await used(world, world.carol.id)
    cases = [
        ({"model": "tiny"}, "does not edit pictures by instruction; these do: kontext"),
        ({"image2": AttachmentOption("b.png", png((16, 16)))}, "leave out image2"),
    ]
    for extra, expected in cases:
        picture = AttachmentOption("a.png", png((16, 16)))
        interaction = await world.server.invoke(
            "edit",
            user=world.carol,
            options={"image": picture, "instruction": "make it red", **extra},
        )
        message = await interaction.wait_for_original()
        assert interaction.ephemeral and expected in message.content, message.content
        assert not message.custom_ids and "\n" not in message.content
    assert await used(world, world.carol.id) == before


async def test_the_edit_button_works_after_a_restart(world: World) -> None:
    result: Message = world.edited  # type: ignore[attr-defined]
    await world.bot.stop()
    await world.start_bot()
    world.ops = await ops_address(world.bot)
    edited = await edit_by_button(world, result, "make it snow")
    params = read_parameters(edited.attachments[0].data)
    assert params is not None and params.prompt == "make it snow"
    assert ("Source", f"job {job_id_of(result)}, image 1") in params.extra


async def test_an_edit_cut_off_by_a_crash_is_made_after_the_restart(world: World) -> None:
    """The pictures an edit changes are kept before it is queued: a bot killed while the
    edit waits runs it again at the next start, once, charged once."""
    carol = world.carol
    before = await used(world, carol.id)
    # A long job ahead of it keeps the edit waiting in the queue when the bot dies.
    await world.imagine(world.alice, "a long wait", steps=50, count=4)
    picture = AttachmentOption("dog.png", noisy_png((60, 120)), "image/png")
    interaction = await world.server.invoke(
        "edit", user=carol, options={"image": picture, "instruction": "give it a hat"}
    )
    progress = await interaction.wait_for_original(lambda m: bool(m.custom_ids))
    job_id = job_id_of(progress)
    world.bot.unwatch()
    world.bot.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    assert await world.bot.exited() == -signal.SIGKILL
    async with read_ledger(world.tmp) as ledger:
        assert (await job_of(ledger, job_id)).status in ACTIVE_STATUSES

    await world.start_bot()
    world.ops = await ops_address(world.bot)
    result = await wait_result(interaction)
    params = read_parameters(result.attachments[0].data)
    assert params is not None and params.prompt == "give it a hat"
    assert "Source hash" in dict(params.extra)  # an edit of the kept picture, not a new image
    assert params.height > params.width  # the kept picture's 1:2
    await world.bot.wait_for_line(rf"job {job_id}: delivered", within=JOB_TIMEOUT)
    assert len(world.results_for(job_id)) == 1
    assert await used(world, carol.id) == before + 1


async def test_describe_answers_four_prompts_each_imagined_by_its_presser(world: World) -> None:
    """Four numbered prompts, an Imagine button each, nothing charged; a press is an /imagine
    of that prompt at the picture's aspect ratio (2:1: 16:9 is the nearest offered), charged
    to the presser, after a restart; a button forged onto the answer with a ratio never
    offered runs nothing."""
    emil = world.emil
    async with read_ledger(world.tmp) as ledger:
        before = await ledger.jobs_for_user(world.guild.id, emil.id)
    picture = AttachmentOption("dunes.png", noisy_png((120, 60)), "image/png")
    asked = await world.server.invoke("describe", user=emil, options={"image": picture})
    answer = await asked.wait_for_original(timeout=JOB_TIMEOUT)
    assert asked.ephemeral and answer.ephemeral, answer.content
    prompts = prompts_of(answer.content)
    assert sorted(prompts) == [1, 2, 3, 4] and all(prompts.values()), answer.content
    assert answer.custom_ids == [f"imagine-describe:{n}:16:9" for n in (1, 2, 3, 4)]
    labels = [c["label"] for row in answer.components for c in row["components"]]
    assert labels == ["Imagine 1", "Imagine 2", "Imagine 3", "Imagine 4"]
    async with read_ledger(world.tmp) as ledger:  # describing is no job, and costs nothing
        assert await ledger.jobs_for_user(world.guild.id, emil.id) == before
        assert (await ledger.user_status(world.guild.id, emil.id)).used == 0

    forged = await world.server.click(answer, "imagine-describe:1:7:5", user=emil, validate=False)
    note = await forged.wait_for_original(lambda m: m is not answer)
    assert forged.ephemeral and "does not belong to a /describe answer" in note.content

    await world.bot.stop()  # the buttons live in the message, not in the process
    await world.start_bot()
    world.ops = await ops_address(world.bot)
    pressed = await world.server.click(answer, "imagine-describe:2:16:9", user=emil)
    result = await wait_result(pressed)
    job_id = job_id_of(result)
    params = read_parameters(result.attachments[0].data)
    assert params is not None and params.width > params.height  # 16:9, not the model's square
    await world.bot.wait_for_line(rf"job {job_id}: delivered", within=JOB_TIMEOUT)
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id)
        assert job.request.prompt == prompts[2] and job.request.user_id == emil.id
        assert job.request.strength is None  # a text-to-image job: the picture is not reused
        assert (await ledger.user_status(world.guild.id, emil.id)).used == 1


async def test_describe_as_tags_answers_the_tagger_s_top_tags_each_imagined_by_its_presser(
    world: World, model_cache: Path
) -> None:
    """`style:tags`: four prompts made of the tagger's own top tags for the picture (computed
    here with transformers), ratings never shown, the most tags first, nothing charged; an
    Imagine press on a tag prompt makes it for the presser; a tag the server blocks (the
    character) is refused at the press as a typed prompt is, at no cost."""
    finn = world.finn
    pixels = np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    picture = AttachmentOption("art.png", buf.getvalue(), "image/png")
    asked = await world.server.invoke(
        "describe", user=finn, options={"image": picture, "style": "tags"}
    )
    answer = await asked.wait_for_original(timeout=JOB_TIMEOUT)
    assert asked.ephemeral and answer.ephemeral, answer.content
    kept = top_tags(model_cache, Image.fromarray(pixels))  # the tagger's own answer
    assert "hatsune miku" in kept and "hatsune miku" not in kept[:2], kept  # this picture's
    prompts = prompts_of(answer.content)
    counts = sorted({-(-len(kept) * n // 4) for n in (4, 3, 2, 1)}, reverse=True)
    assert prompts == {n: ", ".join(kept[:c]) for n, c in enumerate(counts, start=1)}
    assert not {"general", "sensitive", "questionable", "explicit"} & {
        tag for p in prompts.values() for tag in p.split(", ")
    }
    assert answer.custom_ids == [f"imagine-describe:{n}:3:2" for n in (1, 2, 3, 4)]
    async with read_ledger(world.tmp) as ledger:  # describing is no job, and costs nothing
        assert (await ledger.user_status(world.guild.id, finn.id)).used == 0

    refused = await world.server.click(answer, "imagine-describe:1:3:2", user=finn)
    note = await refused.wait_for_original(lambda m: m is not answer)
    assert refused.ephemeral and "does not allow ('hatsune miku')" in note.content
    pressed = await world.server.click(answer, "imagine-describe:4:3:2", user=finn)
    result = await wait_result(pressed)
    job_id = job_id_of(result)
    await world.bot.wait_for_line(rf"job {job_id}: delivered", within=JOB_TIMEOUT)
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id)
        assert job.request.prompt == prompts[4] and job.request.user_id == finn.id
        assert (await ledger.user_status(world.guild.id, finn.id)).used == 1


async def test_a_result_s_describe_button_answers_its_presser_privately_at_no_cost(
    world: World,
) -> None:
    """A result's Describe gives `/describe`'s answer for the kept image: four prompts,
    privately, an Imagine button each, no job and nothing charged; another member's press is
    refused. An Imagine press makes that prompt's /imagine, charged as one."""
    bob, carol = world.bob, world.carol
    asked = {"prompt": "a red barn", "steps": 2, "ar": "16:9"}
    result = await wait_result(await world.server.invoke("imagine", user=bob, options=asked))
    job_id = job_id_of(result)
    await world.bot.wait_for_line(rf"job {job_id}: delivered", within=JOB_TIMEOUT)
    labels = [c.get("label") for row in result.components for c in row["components"]]
    assert "Describe" in labels, labels
    describe = button_id(result, "ds0")
    before, carol_before = await used(world, bob.id), await used(world, carol.id)
    async with read_ledger(world.tmp) as ledger:
        jobs = await ledger.jobs_for_user(world.guild.id, bob.id)

    refused = await world.server.click(result, describe, user=carol)
    note = await refused.wait_for_original(lambda m: m is not result)
    assert refused.ephemeral and "Only the person who asked" in note.content, note.content
    assert "can describe them" in note.content and not note.custom_ids

    pressed = await world.server.click(result, describe, user=bob)
    answer = await pressed.wait_for_original(lambda m: m is not result, timeout=JOB_TIMEOUT)
    assert pressed.ephemeral and answer.ephemeral, answer.content
    assert f"image 1 of job #{job_id}" in answer.content
    prompts = prompts_of(answer.content)
    assert sorted(prompts) == [1, 2, 3, 4] and all(prompts.values()), answer.content
    assert answer.custom_ids == [f"imagine-describe:{n}:16:9" for n in (1, 2, 3, 4)]
    async with read_ledger(world.tmp) as ledger:  # describing is no job, and costs nothing
        assert await ledger.jobs_for_user(world.guild.id, bob.id) == jobs
    assert (await used(world, bob.id), await used(world, carol.id)) == (before, carol_before)

    pressed = await world.server.click(answer, "imagine-describe:3:16:9", user=bob)
    imagined = job_id_of(await wait_result(pressed))
    await world.bot.wait_for_line(rf"job {imagined}: delivered", within=JOB_TIMEOUT)
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, imagined)
        assert (job.request.kind, job.request.prompt) == (JobKind.IMAGINE, prompts[3])
        assert job.request.user_id == bob.id
    assert await used(world, bob.id) == before + 1


async def test_describe_checks_the_picture_and_the_rate_limit_privately(world: World) -> None:
    """A text file is refused as /imagine refuses it; a member past `commands_per_minute`
    (12) is told privately to slow down, and the picture is not fetched."""
    dora = world.dora
    text = AttachmentOption("notes.txt", b"just text", "text/plain")
    refused = await world.server.invoke("describe", user=dora, options={"image": text})
    message = await refused.wait_for_original()
    assert refused.ephemeral and "not a picture" in message.content, message.content
    assert not message.custom_ids
    for _ in range(11):  # the rest of the minute's 12 commands
        info = await world.server.invoke("info", user=dora)
        await info.wait_for_original()
    picture = AttachmentOption("late.png", png((32, 32)), "image/png")
    limited = await world.server.invoke("describe", user=dora, options={"image": picture})
    message = await limited.wait_for_original()
    assert limited.ephemeral and "Slow down" in message.content, message.content
    assert not message.custom_ids
    assert not world.server.requests_to("GET", r"late\.png")
