"""End to end: `imagine-bot run` against the Discord test server, one bot for the module.

Users run real slash commands and click real buttons; the server enforces Discord's rules
(3 s to answer, one answer, edit rate limits as violations, token lifetime) and every test
ends with `assert_clean()`. The database is read back with the ledger's own code.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from PIL import Image

from bot.ledger import JobKind, JobStatus, QuotaKind, RefusalReason
from engine import read_parameters
from testkit.discord_server import MANAGE_GUILD, AttachmentOption, Interaction, Message, User
from testkit.jobs import (
    JOB_TIMEOUT,
    button_id,
    job_id_of,
    job_of,
    read_ledger,
    result_of,
    wait_result,
)
from testkit.world import NewWorld, World

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.usefixtures("clean_world")]

RELATIVE_TIME = re.compile(r"<t:\d+:R>")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(new_world: NewWorld) -> AsyncIterator[World]:
    """#art allows /imagine, #lounge does not; `mod` has the moderator role (no Manage
    Server), `admin` has Manage Server; 3 images a day; an edit over Discord's rate limit is
    a violation; describing pictures is off."""
    async with new_world(
        channels=("art", "lounge"),
        users=("alice", "bob", "carol", "dave", "erin", "frank", "gwen", "hank", "ivy"),
    ) as world:
        world.server.rules.rate_limit_is_violation = True  # the bot must pace its edits itself
        helpers = world.guild.create_role("Helpers")
        admins = world.guild.create_role("Admins", permissions=MANAGE_GUILD)
        world.add_user("mod", roles=[helpers])
        world.add_user("admin", roles=[admins])
        world.configure(
            discord={"moderator_role_ids": [helpers.id]},
            quota={"daily_images": 3, "max_queued_per_user": 2},
            moderation={
                "allowed_channel_ids": [world.art.id],
                "blocked_words": ["forbidden"],
                "forced_negative_prompt": "blurry",
            },
            describe={"model": ""},
        )
        async with world.running_bot():
            yield world


async def test_commands_are_synced_to_the_guild_with_declared_limits(world: World) -> None:
    commands = {c["name"]: c for c in world.server.synced_commands(world.guild)}
    assert set(commands) == {
        "describe",
        "edit",
        "imagine",
        "info",
        "inpaint",
        "models",
        "quota",
        "settings",
        "usage",
    }
    options = {o["name"]: o for o in commands["imagine"]["options"]}
    assert options["prompt"]["required"] and options["prompt"]["max_length"] == 1000
    assert (options["steps"]["min_value"], options["steps"]["max_value"]) == (1, 50)
    assert (options["count"]["min_value"], options["count"]["max_value"]) == (1, 4)
    assert [c["value"] for c in options["size"]["choices"]] == ["square", "portrait", "landscape"]
    assert options["model"]["autocomplete"] and not options["model"]["required"]
    assert [c["value"] for c in options["fix"]["choices"]] == ["faces", "hands", "both"]
    inpaint = {o["name"]: (o["type"], o.get("required")) for o in commands["inpaint"]["options"]}
    assert inpaint == {  # two attachments (11), a text (3)
        "image": (11, True),
        "mask": (11, True),
        "prompt": (3, True),
        "model": (3, False),
    }
    # Moderator commands are hidden from members (and checked by the bot, see below).
    assert int(commands["quota"]["default_member_permissions"]) == MANAGE_GUILD
    assert int(commands["usage"]["default_member_permissions"]) == MANAGE_GUILD
    assert commands["imagine"]["default_member_permissions"] is None


async def test_imagine_delivers_pngs_whose_seeds_match_the_embed(world: World) -> None:
    server = world.server
    interaction = await server.invoke(
        "imagine",
        user=world.alice,
        channel=world.art,
        options={
            "prompt": "a lighthouse at dusk",
            "seed": 1234,
            "steps": 2,
            "count": 2,
            "size": "portrait",
        },
    )
    first = await interaction.wait_for_response()
    assert first.accepted and first.type == 5 and first.ephemeral  # deferred within 3 s
    progress = await interaction.wait_for_original(lambda m: bool(m.custom_ids))
    job_id = job_id_of(progress)
    assert progress.ephemeral and f"Job #{job_id}" in progress.content
    key = button_id(progress, "cancel").rsplit(":", 1)[1]  # the job's random key
    assert progress.custom_ids == [f"imagine:cancel:{job_id}:{key}"] and len(key) == 12

    result = await wait_result(interaction)
    assert not result.ephemeral and result.content.startswith(world.alice.mention)
    assert result.pinged_user_ids == {world.alice.id} and not result.pings_everyone
    assert result.allowed_mentions is not None
    assert [int(u) for u in result.allowed_mentions["users"]] == [world.alice.id]
    ids = [
        f"imagine:{code}:{job_id}:{key}" for code in ("u0", "u1", "vx0", "vx1", "reroll", "delete")
    ]
    assert result.custom_ids == ids  # U1 U2 / V1 V2 / Reroll Delete
    (embed,) = result.embeds
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert embed["title"] == "a lighthouse at dusk"
    assert fields["Seeds"] == "1234, 1235" and fields["Size"] == "64x96"
    assert fields["Negative"] == "blurry"  # the forced negative prompt
    names = [a.filename for a in result.attachments]
    assert names == [f"imagine-{job_id}-{key}-1234.png", f"imagine-{job_id}-{key}-1235.png"]
    for attachment, seed in zip(result.attachments, (1234, 1235), strict=True):
        with Image.open(io.BytesIO(attachment.data)) as image:
            image.verify()
        params = read_parameters(attachment.data)
        assert params is not None
        assert (params.seed, params.prompt, params.negative_prompt) == (
            seed,
            "a lighthouse at dusk",
            "blurry",
        )
        assert (params.width, params.height) == (64, 96) == attachment.dimensions
    done = await interaction.wait_for_original(lambda m: "done" in m.content)
    assert not done.custom_ids and not done.attachments  # no Cancel once it is over

    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id)
        assert job.status is JobStatus.DONE and job.message_id == result.id
        asked = job.request
        assert asked.seed == 1234 and asked.image_count == 2 and asked.interaction_token is None


async def test_two_users_at_once_each_get_their_own_images(world: World) -> None:
    server = world.server
    bob, carol = await asyncio.gather(
        server.invoke(
            "imagine",
            user=world.bob,
            channel=world.art,
            options={"prompt": "a red fox", "steps": 2},
        ),
        server.invoke(
            "imagine",
            user=world.carol,
            channel=world.art,
            options={"prompt": "a blue whale", "steps": 2, "size": "landscape"},
        ),
    )
    bob_result, carol_result = await asyncio.gather(wait_result(bob), wait_result(carol))
    assert bob_result.pinged_user_ids == {world.bob.id}
    assert carol_result.pinged_user_ids == {world.carol.id}
    assert bob_result.embeds[0]["title"] == "a red fox"
    assert carol_result.embeds[0]["title"] == "a blue whale"
    assert carol_result.attachments[0].dimensions == (96, 64)
    assert job_id_of(bob_result) != job_id_of(carol_result)


async def test_quota_refusal_is_private_and_says_when_it_refills(world: World) -> None:
    server = world.server
    job_id, _ = await world.imagine(world.dave, prompt="three cats", count=3)  # all 3 images
    refused = await server.invoke(
        "imagine", user=world.dave, channel=world.art, options={"prompt": "one more cat"}
    )
    message = await refused.wait_for_original()
    assert refused.ephemeral and message.ephemeral and refused.messages == [message]
    assert "used your 3 images" in message.content
    assert RELATIVE_TIME.search(message.content), message.content
    assert not message.attachments and not message.custom_ids

    info = await server.invoke("info", user=world.dave, channel=world.art)
    text = (await info.wait_for_original()).content
    assert info.ephemeral and "**0** of 3 images left" in text and RELATIVE_TIME.search(text)

    async with read_ledger(world.tmp) as ledger:
        jobs = await ledger.jobs_for_user(world.guild.id, world.dave.id)
        assert [j.status for j in jobs][:1] == [JobStatus.REFUSED]
        assert jobs[0].refusal_reason is RefusalReason.QUOTA
    # Leave the engine idle for the next test.
    await server.wait_for_message(
        world.art, lambda m: job_id_of_or_none(m) == job_id, timeout=JOB_TIMEOUT
    )


def job_id_of_or_none(message: Message) -> int | None:
    try:
        return job_id_of(message) if message.attachments else None
    except AssertionError:
        return None


async def test_blocked_words_and_closed_channels_are_refused_privately(world: World) -> None:
    server = world.server
    blocked = await server.invoke(
        "imagine", user=world.alice, channel=world.art, options={"prompt": "a FORBIDDEN castle"}
    )
    answer = await blocked.wait_for_original()
    text = answer.content
    assert blocked.ephemeral and blocked.messages == [answer]
    assert blocked.ephemeral and "does not allow" in text and "forbidden" in text.lower()
    # The word as the model reads it: what the engine strips after the check hides nothing.
    for hidden in HIDDEN_FORBIDDEN:  # gwen's: one member's commands stay under the rate limit
        text = await ask(world, world.gwen, "imagine", {"prompt": hidden})
        assert "does not allow ('forbidden')" in text, hidden
    closed = await server.invoke(
        "imagine", user=world.alice, channel=world.lounge, options={"prompt": "a castle"}
    )
    answer = await closed.wait_for_original()
    text = answer.content
    assert closed.messages == [answer]
    assert closed.ephemeral and "can't be made here" in text and world.art.mention in text
    async with read_ledger(world.tmp) as ledger:
        summary = await ledger.usage_summary(world.guild.id, 1)
        reasons = {r.reason: r.count for r in summary.refusals}
        assert reasons[RefusalReason.BLOCKED_WORD] == 1 + len(HIDDEN_FORBIDDEN)
        assert reasons[RefusalReason.CHANNEL] == 1
        assert (await ledger.user_status(world.guild.id, world.gwen.id)).used == 0


#: "forbidden" behind what the engine strips after the check, or in other letters.
HIDDEN_FORBIDDEN = (
    "a forbi\u200bdden castle",  # zero-width space
    "a for\u00adbidden castle",  # soft hyphen
    "a forbid\u2060den castle",  # word joiner
    "a forbi()dden castle",
    "a for\\bidden castle",  # a lone backslash
    "a FÖRBIDDEN castle",
)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"prompt": "a (cat:" + "9" * 60 + ")"},
            "between -10 and 10; in the prompt, 'cat' weighs 1e+60",
        ),
        ({"prompt": "(" * 30 + "dog" + ")" * 30}, "'dog' weighs 17.4"),  # 1.1 ** 30
        ({"prompt": "a BREAK " * 124 + "a"}, "it takes 125 windows of 75 tokens"),  # 993 chars
        # `fix:` is declared on every bot; this one has no [fix] detector.
        (
            {"prompt": "a face", "fix": "faces"},
            "Fixing faces is off here: no face detector is configured",
        ),
        (
            {"prompt": "a hand", "fix": "both"},
            "Fixing faces is off here: no face detector is configured",
        ),
        (
            {"prompt": "a hand", "fix": "hands"},
            "Fixing hands is off here: no hand detector is configured ([fix] hands_detector).",
        ),
    ],
    ids=[
        "huge-weight",
        "deep-nesting",
        "125-breaks",
        "fix-without-a-detector",
        "both-without-one",
        "hands-without-one",
    ],
)
async def test_an_overflowing_weight_or_too_many_windows_is_refused_and_costs_nothing(
    world: World, options: dict[str, str], expected: str
) -> None:
    async with read_ledger(world.tmp) as ledger:
        before = await ledger.user_status(world.guild.id, world.bob.id)
    refused = await world.server.invoke(
        "imagine", user=world.bob, channel=world.art, options=options
    )
    answer = await refused.wait_for_original()
    assert refused.ephemeral and expected in answer.content, answer.content
    assert not answer.custom_ids and "Traceback" not in answer.content
    async with read_ledger(world.tmp) as ledger:
        after = await ledger.user_status(world.guild.id, world.bob.id)
        assert (after.used, after.queued, after.running) == (before.used, before.queued, 0)
        (latest, *_) = await ledger.jobs_for_user(world.guild.id, world.bob.id)
        assert latest.refusal_reason == RefusalReason.INVALID


async def ask(
    world: World,
    who: User,
    command: str,
    options: dict[str, object] | None = None,
    *,
    forged: bool = False,
) -> str:
    """Run a command in #art and return its private answer (`forged`: not validated, as a
    payload Discord would not send)."""
    interaction = await world.server.invoke(
        command, user=who, channel=world.art, options=options, validate=not forged
    )
    message = await interaction.wait_for_original()
    assert interaction.ephemeral and message.pinged_user_ids == set()
    return message.content


async def test_moderators_manage_quotas_and_members_cannot(world: World) -> None:
    server = world.server
    frank = world.frank

    async def run(
        who: User, command: str, options: dict[str, object] | None = None, *, forged: bool = False
    ) -> str:
        return await ask(world, who, command, options, forged=forged)

    # A member cannot: Discord hides the commands, so these are forged payloads.
    with pytest.raises(ValueError, match="would not see it"):
        await server.invoke(
            "quota set", user=world.alice, options={"user": world.alice, "daily": 99}
        )
    text = await run(world.alice, "quota set", {"user": world.alice, "daily": 99}, forged=True)
    assert "Only moderators" in text
    assert "Only moderators" in await run(world.alice, "usage", forged=True)
    # Nor read another member's allowance and history.
    assert "Only moderators" in await run(world.alice, "quota show", {"user": frank}, forged=True)
    assert "Only moderators" in await run(world.alice, "quota block", {"user": frank}, forged=True)

    # A moderator by role, and one by Manage Server. A role without Manage Server sees the
    # commands once an admin allows it under Server Settings → Integrations, which the test
    # server does not model: its invocations are sent unvalidated.
    mod_set = {"user": frank, "daily": 1}
    assert "1 images/24h" in await run(world.mod, "quota set", mod_set, forged=True)
    shown = await run(world.mod, "quota show", {"user": frank}, forged=True)
    assert "1 images/24h" in shown and "Recent changes" in shown
    assert frank.mention in await run(world.admin, "quota block", {"user": frank})
    assert "blocked you" in await run(frank, "imagine", {"prompt": "a boat"})
    assert "default" in await run(world.admin, "quota reset", {"user": frank})

    async with read_ledger(world.tmp) as ledger:
        history = await ledger.quota_history(world.guild.id, frank.id)
        assert [(c.moderator_id, c.new.kind) for c in history] == [
            (world.admin.id, QuotaKind.DEFAULT),
            (world.admin.id, QuotaKind.LIMITED),
            (world.mod.id, QuotaKind.LIMITED),
        ]
        assert history[1].new.blocked and history[2].new.daily == 1
        assert (
            await ledger.quota_setting(world.guild.id, world.alice.id)
        ).kind is QuotaKind.DEFAULT
        assert not await ledger.quota_history(world.guild.id, world.alice.id)


async def test_usage_shows_a_chart_top_users_and_refusals(world: World) -> None:
    interaction = await world.server.invoke(
        "usage", user=world.admin, channel=world.art, options={"days": 7}
    )
    message = await interaction.wait_for_original(lambda m: bool(m.attachments))
    assert interaction.ephemeral
    chart = message.attachment("usage.png")
    with Image.open(io.BytesIO(chart.data)) as image:
        assert image.format == "PNG" and image.size == (800, 360)
    (embed,) = message.embeds
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert world.dave.mention in fields["Top users"]  # 3 images, the most
    assert "quota: 1" in fields["Refusals"]
    assert f"blocked_word: {1 + len(HIDDEN_FORBIDDEN)}" in fields["Refusals"]


async def test_reroll_and_delete_buttons(world: World) -> None:
    server = world.server
    original = await server.invoke(
        "imagine",
        user=world.bob,
        channel=world.art,
        options={"prompt": "a paper boat", "steps": 2, "seed": 7},
    )
    result = await wait_result(original)
    job_id = job_id_of(result)

    # Someone else may not reroll it (it would spend their allowance on bob's prompt).
    not_theirs = await server.click(result, button_id(result, "reroll"), user=world.carol)
    text = (await not_theirs.wait_for_original(lambda m: m is not result)).content
    assert not_theirs.ephemeral and "Only the person who asked" in text
    assert result_of(not_theirs) is None

    reroll = await server.click(result, button_id(result, "reroll"), user=world.bob)
    rerolled = await wait_result(reroll)
    new_id = job_id_of(rerolled)
    assert new_id != job_id and rerolled.pinged_user_ids == {world.bob.id}
    assert rerolled.embeds[0]["title"] == "a paper boat"
    assert f"reroll of #{job_id}" in rerolled.embeds[0]["footer"]["text"]
    new_seed = read_parameters(rerolled.attachments[0].data).seed  # type: ignore[union-attr]
    assert new_seed != 7

    refused = await server.click(result, button_id(result, "delete"), user=world.carol)
    # The click is acknowledged before the database is read, so the refusal is a private
    # followup rather than the first response.
    note = await refused.wait_for_message(lambda m: m is not result)
    assert note.ephemeral and "Only the person who asked" in note.content
    assert not result.deleted

    by_owner = await server.click(result, button_id(result, "delete"), user=world.bob)
    await by_owner.wait_for(lambda _: result.deleted, what="bob's result to be deleted")
    by_mod = await server.click(rerolled, button_id(rerolled, "delete"), user=world.mod)
    await by_mod.wait_for(lambda _: rerolled.deleted, what="the reroll to be deleted")

    async with read_ledger(world.tmp) as ledger:
        rerolled_job = (await job_of(ledger, new_id)).request
        assert rerolled_job.user_id == world.bob.id and rerolled_job.reroll_of == job_id
        assert rerolled_job.seed == new_seed


async def test_cancel_while_queued_or_running_and_too_many_jobs(world: World) -> None:
    server = world.server
    raised = await server.invoke(
        "quota set", user=world.admin, channel=world.art, options={"user": world.erin, "daily": 20}
    )
    await raised.wait_for_original()
    # A long job (seconds of work) runs; the next one waits behind it.
    first_id, first = await world.imagine(world.erin, prompt="a slow mural", steps=50, count=3)
    second_id, second = await world.imagine(world.erin, prompt="a slow sketch", steps=50)
    third = await server.invoke(
        "imagine", user=world.erin, channel=world.art, options={"prompt": "one too many"}
    )
    text = (await third.wait_for_original()).content
    assert third.ephemeral and "most jobs allowed" in text

    forged = await server.click(first, button_id(first, "cancel"), user=world.bob, validate=False)
    text = (await forged.wait_for_original()).content
    assert forged.ephemeral and "Only the person who asked" in text

    clicks = [
        await server.click(message, button_id(message, "cancel"), user=world.erin)
        for message in (first, second)
    ]
    for click, message in zip(clicks, (first, second), strict=True):
        await click.wait_for_response()
        assert click.response_type == 7  # the progress message itself is updated
        assert message.interaction is not None
        await message.interaction.wait_for_original(
            lambda m: "cancelled" in m.content, timeout=JOB_TIMEOUT
        )
    async with read_ledger(world.tmp) as ledger:
        for job_id in (first_id, second_id):
            assert (await job_of(ledger, job_id)).status is JobStatus.CANCELLED
        status = await ledger.user_status(world.guild.id, world.erin.id)
        assert status.used == 0 and status.queued == status.running == 0  # given back
    assert not any(result_of(m.interaction) for m in (first, second) if m.interaction)


async def test_a_job_that_outlives_its_token_is_posted_to_the_channel(world: World) -> None:
    """Last in the module: it moves Discord's clock 14.5 minutes forward."""
    server = world.server
    job_id, progress = await world.imagine(world.frank, prompt="a long night", steps=50, count=2)
    server.advance_time(14.5 * 60)
    # Any interaction tells the bot Discord's time: the job's token now has 30 s left, under
    # the bot's one-minute margin, so it must not be used any more.
    info = await server.invoke("info", user=world.alice, channel=world.art)
    await info.wait_for_original()
    posted = await server.wait_for_message(
        world.art,
        lambda m: job_id_of_or_none(m) == job_id,
        timeout=JOB_TIMEOUT,
    )
    assert posted.interaction is None  # a plain channel message, not a followup
    assert posted.content.startswith(world.frank.mention)
    assert posted.pinged_user_ids == {world.frank.id}
    assert progress.interaction is not None and result_of(progress.interaction) is None
    assert server.requests_to("POST", rf"^/channels/{world.art.id}/messages$")
    # The job is marked done just after its result is posted: wait for the bot to say so.
    await world.bot.wait_for_line(rf"job {job_id}: delivered", within=JOB_TIMEOUT)
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id)
        assert job.status is JobStatus.DONE and job.message_id == posted.id


async def test_moderators_change_this_servers_rules_with_settings(world: World) -> None:
    async def run(
        who: User, command: str, options: dict[str, object] | None = None, *, forged: bool = False
    ) -> str:
        return await ask(world, who, command, options, forged=forged)

    words = {"setting": "blocked_words", "value": "boat, dragon"}
    assert "Only moderators" in await run(world.alice, "settings set", words, forged=True)
    assert "is now boat, dragon" in await run(world.admin, "settings set", words)
    refused = await run(world.dave, "imagine", {"prompt": "a red Boat at dawn"})
    assert "does not allow" in refused and "boat" in refused.lower()

    lounge = {"setting": "allowed_channel_ids", "value": world.lounge.mention}
    assert world.lounge.mention in await run(world.admin, "settings set", lounge)
    closed = await run(world.dave, "imagine", {"prompt": "a cat"})  # from #art, now closed
    assert "can't be made here" in closed and world.lounge.mention in closed

    bad = await run(world.admin, "settings set", {"setting": "daily_images", "value": "lots"})
    assert "whole number" in bad
    shown = await run(world.admin, "settings show")
    assert "**blocked_words**: boat, dragon (set here)" in shown
    assert "**forced_negative_prompt**: blurry (the bot's default)" in shown
    assert "Recent changes" in shown

    for name in ("blocked_words", "allowed_channel_ids"):
        assert "default again" in await run(world.admin, "settings reset", {"setting": name})
    still = await run(world.dave, "imagine", {"prompt": "a FORBIDDEN boat"})  # config's word
    assert "forbidden" in still.lower()
    async with read_ledger(world.tmp) as ledger:
        history = await ledger.settings_history(world.guild.id)
        assert [(c.setting, c.new is None) for c in history] == [
            ("allowed_channel_ids", True),
            ("blocked_words", True),
            ("allowed_channel_ids", False),
            ("blocked_words", False),
        ]
        assert {c.moderator_id for c in history} == {world.admin.id}


async def test_upscale_and_vary_follow_the_rules_of_now(world: World) -> None:
    """Results made under earlier rules are upscaled under today's: a word blocked since
    refuses it, and today's forced negative prompt is added. A forced negative prompt the
    engine cannot read (it would fail every request) is refused when a moderator sets it."""
    server, hank = world.server, world.hank

    async def run(command: str, options: dict[str, object]) -> str:
        return await ask(world, world.mod, command, options, forged=True)  # see above

    assert "20 images/24h" in await run("quota set", {"user": hank, "daily": 20})
    made = [
        await wait_result(
            await server.invoke(
                "imagine", user=hank, channel=world.art, options={"prompt": prompt, "steps": 2}
            )
        )
        for prompt in ("a paper kite", "a paper lantern")
    ]
    kite, lantern = made
    assert "is now kite" in await run("settings set", {"setting": "blocked_words", "value": "kite"})
    refused = await server.click(kite, button_id(kite, "u0"), user=hank)
    note = await refused.wait_for_original(lambda m: m is not kite)
    assert refused.ephemeral and "does not allow ('kite')" in note.content

    negative = {"setting": "forced_negative_prompt", "value": "(grainy:1.2.3)"}
    text = await run("settings set", negative)
    assert "cannot be used" in text and "not a number" in text
    negative["value"] = "grainy"
    assert "is now grainy" in await run("settings set", negative)
    big = await wait_result(await server.click(lantern, button_id(lantern, "u0"), user=hank))
    params = read_parameters(big.attachments[0].data)
    assert params is not None and params.negative_prompt == "blurry, grainy"

    for name in ("blocked_words", "forced_negative_prompt"):
        assert "default again" in await run("settings reset", {"setting": name})
    await world.bot.wait_for_line(rf"job {job_id_of(big)}: delivered", within=JOB_TIMEOUT)
    async with read_ledger(world.tmp) as ledger:
        status = await ledger.user_status(world.guild.id, hank.id)
        assert status.used == 2 + 2  # two images and one upscale, not the refused one
        jobs = await ledger.jobs_for_user(world.guild.id, hank.id)
        refused = [
            (j.request.kind, j.refusal_reason) for j in jobs if j.status is JobStatus.REFUSED
        ]
        assert refused == [(JobKind.UPSCALE, RefusalReason.BLOCKED_WORD)]
        history = await ledger.settings_history(world.guild.id)
        assert [c.setting for c in history[:4]] == [
            "forced_negative_prompt",
            "blocked_words",
            "forced_negative_prompt",  # "grainy": the refused one was not stored
            "blocked_words",
        ]


async def test_prompt_choices_make_a_job_each_all_or_none(world: World) -> None:
    """`a {red, blue} car` is two jobs, each charged; `--no rust` joins the negative prompt
    (after the server's forced one). Three choices are past the most a member may have
    queued (2), and two jobs of an image each past what is left of ivy's 3 images: both are
    refused whole, at no cost."""
    server, ivy = world.server, world.ivy
    asked = await server.invoke(
        "imagine",
        user=ivy,
        channel=world.art,
        options={"prompt": "a {red, blue} car --no rust", "steps": 2},
    )

    def posted(interaction: Interaction) -> list[Message]:
        return [m for m in interaction.followups if m.attachments and not m.ephemeral]

    await asked.wait_for(lambda i: len(posted(i)) == 2, timeout=JOB_TIMEOUT, what="two results")
    job_ids = sorted(job_id_of(m) for m in posted(asked))
    for job_id in job_ids:
        await world.bot.wait_for_line(rf"job {job_id}: delivered", within=JOB_TIMEOUT)
    async with read_ledger(world.tmp) as ledger:
        made = [await job_of(ledger, job_id) for job_id in job_ids]
        assert [j.request.prompt for j in made] == ["a red car", "a blue car"]
        assert {j.request.negative_prompt for j in made} == {"rust, blurry"}
        assert all(j.status is JobStatus.DONE and j.request.user_id == ivy.id for j in made)
        assert (await ledger.user_status(world.guild.id, ivy.id)).used == 2

    for prompt, expected in (
        ("a {big, small, tiny} dog", "make 3 prompts; at most 2 are allowed"),
        ("{a, one} cat", "none was queued, nothing was charged"),
    ):
        refused = await server.invoke(
            "imagine", user=ivy, channel=world.art, options={"prompt": prompt, "steps": 2}
        )
        message = await refused.wait_for_original()
        assert refused.ephemeral and expected in message.content, message.content
        assert not message.attachments and not message.custom_ids
    async with read_ledger(world.tmp) as ledger:
        status = await ledger.user_status(world.guild.id, ivy.id)
        assert (status.used, status.queued, status.running) == (2, 0, 0)
        jobs = await ledger.jobs_for_user(world.guild.id, ivy.id)
        assert not [j for j in jobs if j.active]
    info = await server.invoke("info", user=ivy, channel=world.art)
    text = (await info.wait_for_original()).content
    assert "one job per choice (up to 2)" in text and "--no" in text
    assert "/describe" not in text  # off on this bot


async def test_describe_is_refused_privately_when_it_is_off(world: World) -> None:
    picture = io.BytesIO()
    Image.new("RGB", (16, 16), "orange").save(picture, format="PNG")
    asked = await world.server.invoke(
        "describe",
        user=world.ivy,
        channel=world.art,
        options={"image": AttachmentOption("cat.png", picture.getvalue(), "image/png")},
    )
    message = await asked.wait_for_original()
    assert asked.ephemeral and "Describing pictures is off" in message.content
    assert not world.server.requests_to("GET", r"^/attachments/.*cat\.png")  # never fetched
