"""End-to-end tests of the Discord test server with the real discord.py client over sockets.

A small ``AutoShardedBot`` (``/ping`` with a file and a button, ``/admin quota set`` with a
user option, and a few commands that misbehave on cue) runs against the server; each test
checks one part of the contract that the bot's own end-to-end tests will rely on.
"""

from __future__ import annotations

import asyncio
import gc
import io
import struct
import warnings
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands
from discord.http import Route

from testkit.discord_server import (
    MANAGE_GUILD,
    Channel,
    DiscordTestServer,
    Guild,
    RateLimit,
    User,
    run_bot,
)


def make_png(width: int = 2, height: int = 2) -> bytes:
    """A valid RGB PNG built by hand, so the test has no image dependency."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


PNG = make_png()


@dataclass
class Probe:
    """What the test bot saw and did, plus a gate tests open to make a command continue."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    clicks: list[int] = field(default_factory=list)
    quota_calls: list[tuple[int, int]] = field(default_factory=list)
    errors: list[discord.HTTPException] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    sync_guild: int | None = None


class PingView(discord.ui.View):
    """Persistent view: the button keeps working after a restart (stable custom_id)."""

    def __init__(self, probe: Probe) -> None:
        super().__init__(timeout=None)
        self.probe = probe

    @discord.ui.button(label="Again", custom_id="ping:again", style=discord.ButtonStyle.primary)
    async def again(
        self, interaction: discord.Interaction, button: discord.ui.Button[PingView]
    ) -> None:
        self.probe.clicks.append(interaction.user.id)
        await interaction.response.send_message("again!", ephemeral=True)


class FeedbackModal(discord.ui.Modal, title="Feedback"):
    text = discord.ui.TextInput(label="Text", custom_id="feedback:text")
    name = discord.ui.Label(text="Name", component=discord.ui.TextInput(custom_id="feedback:name"))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        assert isinstance(self.name.component, discord.ui.TextInput)
        await interaction.response.send_message(
            f"thanks {self.name.component.value}: {self.text.value}", ephemeral=True
        )


def make_bot(probe: Probe) -> commands.AutoShardedBot:
    """The bot under test: an ordinary AutoShardedBot with app commands."""
    bot = commands.AutoShardedBot(
        command_prefix=commands.when_mentioned,
        intents=discord.Intents.default(),
        guild_ready_timeout=0.05,
        help_command=None,
    )

    @bot.tree.command(description="Replies with a picture and a button")
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await interaction.followup.send(
            f"pong {interaction.user.mention}",
            file=discord.File(io.BytesIO(PNG), "pong.png"),
            view=PingView(probe),
            allowed_mentions=discord.AllowedMentions(
                users=[interaction.user], roles=False, everyone=False
            ),
        )

    @bot.tree.command(description="Waits for the test before answering")
    async def slow(interaction: discord.Interaction) -> None:
        await probe.gate.wait()
        try:
            await interaction.response.defer()
        except discord.HTTPException as exc:
            probe.errors.append(exc)

    @bot.tree.command(description="Defers, then follows up when the test says so")
    async def later(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        await probe.gate.wait()
        try:
            await interaction.followup.send("done")
        except discord.HTTPException as exc:
            probe.errors.append(exc)

    @bot.tree.command(description="Sends a 2 KiB file")
    async def big(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        try:
            await interaction.followup.send(file=discord.File(io.BytesIO(b"x" * 2048), "big.bin"))
        except discord.HTTPException as exc:
            probe.errors.append(exc)

    @bot.tree.command(description="Edits its answer a few times")
    async def progress(interaction: discord.Interaction, steps: int) -> None:
        await interaction.response.send_message("step 0")
        for step in range(1, steps + 1):
            await interaction.edit_original_response(content=f"step {step}")

    @bot.tree.command(description="Posts in the channel, then edits the post")
    async def announce(interaction: discord.Interaction) -> None:
        assert isinstance(interaction.channel, discord.TextChannel)
        post = await interaction.channel.send("hello")
        await post.edit(content="hello!")
        await interaction.response.send_message("posted", ephemeral=True)

    @bot.tree.command(description="Opens a feedback form")
    async def feedback(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(FeedbackModal())

    @bot.tree.command(description="Pick a style")
    async def style(interaction: discord.Interaction, name: str) -> None:
        await interaction.response.send_message(f"style {name}")

    @style.autocomplete("name")
    async def style_names(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = ["anime", "analog film", "watercolor"]
        return [app_commands.Choice(name=n, value=n) for n in names if n.startswith(current)]

    admin = app_commands.Group(
        name="admin",
        description="Admin commands",
        default_permissions=discord.Permissions(manage_guild=True),
        guild_only=True,
    )
    quota = app_commands.Group(name="quota", description="Image quotas", parent=admin)

    @quota.command(name="set", description="Set a user's daily quota")
    @app_commands.describe(user="Who", daily="Images per day")
    async def quota_set(
        interaction: discord.Interaction,
        user: discord.Member,
        daily: app_commands.Range[int, 0, 1000],
    ) -> None:
        probe.quota_calls.append((user.id, daily))
        await interaction.response.send_message(
            f"{user.mention} may make {daily} images a day",
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    bot.tree.add_command(admin)

    @bot.event
    async def on_raw_message_delete(payload: discord.RawMessageDeleteEvent) -> None:
        probe.deleted.append(payload.message_id)

    async def setup_hook() -> None:
        bot.add_view(PingView(probe))
        await bot.tree.sync()
        if probe.sync_guild is not None:
            bot.tree.copy_global_to(guild=discord.Object(probe.sync_guild))
            await bot.tree.sync(guild=discord.Object(probe.sync_guild))

    async def before_identify_hook(shard_id: int | None, *, initial: bool = False) -> None:
        """No 5 s pause before a re-IDENTIFY (Discord's identify spacing); nothing to space here."""

    bot.setup_hook = setup_hook  # type: ignore[method-assign]
    bot.before_identify_hook = before_identify_hook  # type: ignore[method-assign]
    return bot


@dataclass
class World:
    server: DiscordTestServer
    guild: Guild
    channel: Channel
    alice: User  # moderator (Manage Guild)
    bob: User  # plain member
    probe: Probe
    bot: commands.AutoShardedBot


@pytest.fixture(autouse=True)
async def no_leaks() -> AsyncIterator[None]:
    """Fail on leaked tasks, unclosed sessions or loop-level errors (shutdown must be clean)."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    yield
    loop.set_exception_handler(previous)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, leaks
    assert not reported, [c.get("message") for c in reported]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with DiscordTestServer() as server:
        server.create_application("imagine-bot")
        guild = server.create_guild("Test Guild")
        channel = guild.create_text_channel("art")
        mods = guild.create_role("Moderator", permissions=MANAGE_GUILD)
        alice = server.create_user("alice")
        bob = server.create_user("bob")
        guild.add_member(alice, roles=[mods])
        guild.add_member(bob)
        probe = Probe()
        yield World(server, guild, channel, alice, bob, probe, make_bot(probe))
    # discord.py's own ready-tracking tasks end within guild_ready_timeout of a (re)connect.
    others = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    if others:
        _, pending = await asyncio.wait(others, timeout=1.0)
        assert not pending, pending


async def test_login_sync_ping_with_file_and_button(world: World) -> None:
    server = world.server
    world.probe.sync_guild = world.guild.id
    async with run_bot(server, world.bot):
        names = sorted(c["name"] for c in server.synced_commands())
        assert names == [
            "admin",
            "announce",
            "big",
            "feedback",
            "later",
            "ping",
            "progress",
            "slow",
            "style",
        ]
        assert {c["name"] for c in server.synced_commands(world.guild)} == set(names)
        assert server.synced_command("ping")["application_id"] == str(server.application.id)
        assert server.requests_to("GET", r"^/gateway/bot$")[0].status == 200

        interaction = await server.invoke("ping", user=world.alice, channel=world.channel)
        message = await interaction.wait_for_followup(lambda m: bool(m.attachments))
        assert interaction.deferred and not interaction.ephemeral
        assert interaction.original is message  # the first followup fills the "thinking" message
        assert message.content == f"pong {world.alice.mention}"
        assert message.pinged_user_ids == {world.alice.id}
        assert message.allowed_mentions is not None and message.allowed_mentions["parse"] == []
        png = message.attachment("pong.png")
        assert png.data == PNG and png.content_type == "image/png" and not png.spoiler
        assert png.dimensions == (2, 2)
        async with aiohttp.ClientSession() as http, http.get(png.url) as resp:
            assert resp.status == 200 and await resp.read() == PNG
        assert message.custom_ids == ["ping:again"]

        click = await server.click(message, "ping:again", user=world.bob)
        reply = await click.wait_for_original()
        assert world.probe.clicks == [world.bob.id]
        assert click.response_type == 4 and click.ephemeral and reply.content == "again!"
    server.assert_clean()


async def test_subcommand_group_with_user_option(world: World) -> None:
    server = world.server
    async with run_bot(server, world.bot):
        interaction = await server.invoke(
            "admin quota set", user=world.alice, options={"user": world.bob, "daily": 5}
        )
        reply = await interaction.wait_for_original()
        assert world.probe.quota_calls == [(world.bob.id, 5)]
        assert interaction.ephemeral and reply.ephemeral
        assert world.bob.mention in reply.content and reply.pinged_user_ids == set()
        options = interaction.payload["data"]["options"]
        assert options[0]["type"] == 2 and options[0]["options"][0]["name"] == "set"
        assert interaction.payload["data"]["resolved"]["members"][str(world.bob.id)]["permissions"]

        with pytest.raises(ValueError, match="expected int"):
            await server.invoke(
                "admin",
                subcommand="quota set",
                user=world.alice,
                options={"user": world.bob, "daily": "5"},
            )
        with pytest.raises(ValueError, match="would not see it"):
            await server.invoke(
                "admin quota set", user=world.bob, options={"user": world.bob, "daily": 1}
            )
    server.assert_clean()


async def test_bad_token_gives_login_failure(world: World) -> None:
    base = Route.BASE
    with pytest.raises(discord.LoginFailure):
        async with run_bot(world.server, world.bot, token="not-the-token"):
            pass
    assert Route.BASE == base
    assert world.server.requests_to("GET", "^/users/@me$")[0].status == 401
    world.server.assert_clean()


async def test_late_first_response_is_a_violation(world: World) -> None:
    server = world.server
    async with run_bot(server, world.bot):
        interaction = await server.invoke("slow", user=world.bob)
        server.advance_time(3.5)
        world.probe.gate.set()
        response = await interaction.wait_for_response()
        assert (response.status, response.accepted) == (404, False)
        await server.wait_until(lambda: world.probe.errors, what="the bot to see the error")
        assert world.probe.errors[0].code == 10062
    with pytest.raises(AssertionError, match="late_response"):
        server.assert_clean()
    server.assert_clean(expected={"late_response"})


async def test_followup_after_15_minutes_fails_with_invalid_token(world: World) -> None:
    server = world.server
    async with run_bot(server, world.bot):
        interaction = await server.invoke("later", user=world.bob)
        assert (await interaction.wait_for_response()).accepted
        assert (
            interaction.ephemeral
            and interaction.original is not None
            and interaction.original.loading
        )
        server.advance_time(15 * 60 + 1)
        world.probe.gate.set()
        await server.wait_until(lambda: world.probe.errors, what="the followup to fail")
        assert (world.probe.errors[0].status, world.probe.errors[0].code) == (401, 50027)
    server.assert_clean(expected={"token_expired"})


async def test_oversized_attachment_is_refused(world: World) -> None:
    server = world.server
    async with run_bot(server, world.bot):
        await server.invoke("big", user=world.bob, attachment_size_limit=1024)
        await server.wait_until(lambda: world.probe.errors, what="the upload to fail")
        assert (world.probe.errors[0].status, world.probe.errors[0].code) == (413, 40005)
    server.assert_clean(expected={"attachment_too_large"})


async def test_unimplemented_route_fails_assert_clean(world: World) -> None:
    server = world.server
    async with run_bot(server, world.bot) as running:
        with pytest.raises(discord.NotFound):
            await running.bot.http.request(
                Route("GET", "/guilds/{guild_id}/bans", guild_id=world.guild.id)
            )
    with pytest.raises(AssertionError, match=r"unimplemented: GET /api/v10/guilds/\d+/bans"):
        server.assert_clean()


async def test_gateway_drop_then_resume_delivers_later_interaction(world: World) -> None:
    server = world.server
    async with run_bot(server, world.bot):
        assert await server.drop_gateway() == 1
        interaction = await server.invoke("ping", user=world.alice)  # queued while disconnected
        await server.wait_for_resume()
        await interaction.wait_for_followup()
        assert (server.gateway.identify_count, server.gateway.resume_count) == (1, 1)
        session = next(iter(server.gateway.sessions.values()))
        assert len(session.events("INTERACTION_CREATE")) == 1
    server.assert_clean()


async def test_injected_429_is_retried_and_delivered_once(world: World) -> None:
    server = world.server
    injection = server.inject_failures("POST", r"^/webhooks/\d+/[^/]+$", [(429, 0.05)])
    async with run_bot(server, world.bot):
        interaction = await server.invoke("ping", user=world.alice)
        await interaction.wait_for_followup()
        assert injection.exhausted
        statuses = [r.status for r in server.requests_to("POST", r"^/webhooks/")]
        assert statuses == [429, 200]
        assert len(interaction.followups) == 1
        assert len([m for m in server.messages_in(world.channel) if m.attachments]) == 1
    server.assert_clean()


async def test_edit_rate_limit_answers_429_and_bot_retries(world: World) -> None:
    server = world.server
    server.rules.edit_rate_limit = RateLimit(2, 0.3)
    server.rules.rate_limit_headers = False  # so discord.py cannot pace itself and must retry
    async with run_bot(server, world.bot):
        interaction = await server.invoke("progress", user=world.bob, options={"steps": 4})
        message = await interaction.wait_for_original(lambda m: m.content == "step 4", timeout=10)
        assert message.edit_count == 4
        assert server.rate_limited_count >= 1
    server.assert_clean()


async def test_user_deletes_message_and_bot_hears_it(world: World) -> None:
    server = world.server
    async with run_bot(server, world.bot):
        interaction = await server.invoke("ping", user=world.alice)
        message = await interaction.wait_for_followup()
        await server.delete_message(world.channel, message)
        await server.wait_until(
            lambda: message.id in world.probe.deleted, what="MESSAGE_DELETE at the bot"
        )
        with pytest.raises(ValueError, match="deleted"):
            await server.click(message, "ping:again", user=world.bob)
    server.assert_clean()


async def test_duplicate_delivery_second_answer_is_refused(world: World) -> None:
    server = world.server
    async with run_bot(server, world.bot) as running:
        interaction = await server.invoke("ping", user=world.alice)
        await interaction.wait_for_followup()
        again = await server.dispatch_interaction(interaction.payload)  # duplicated gateway event
        assert again is interaction
        await interaction.wait_for(lambda i: len(i.callbacks) == 2, what="the second answer")
        assert (interaction.callbacks[1].status, interaction.callbacks[1].accepted) == (400, False)
        await server.wait_until(lambda: running.logged_errors, what="the bot to log the error")
        assert "ping" in running.error_messages()[0]
    server.assert_clean(expected={"already_acknowledged"})


async def test_autocomplete_and_modal(world: World) -> None:
    server = world.server
    async with run_bot(server, world.bot):
        suggest = await server.autocomplete(
            "style", user=world.bob, focused="name", options={"name": "an"}
        )
        choices = await suggest.wait_for(lambda i: i.autocomplete_choices, what="choices")
        assert [c["value"] for c in choices] == ["anime", "analog film"]

        form = await server.invoke("feedback", user=world.bob)
        await form.wait_for(lambda i: i.modal, what="the modal")
        assert form.response_type == 9
        submitted = await server.submit_modal(
            form, {"feedback:text": "great", "feedback:name": "Bob"}
        )
        reply = await submitted.wait_for_original()
        assert reply.content == "thanks Bob: great" and reply.ephemeral
    server.assert_clean()


async def test_channel_post_and_edit(world: World) -> None:
    server = world.server
    async with run_bot(server, world.bot):
        interaction = await server.invoke("announce", user=world.bob)
        post = await server.wait_for_message(world.channel, lambda m: m.content == "hello!")
        await interaction.wait_for_original()
        assert post.edit_count == 1 and post.history[0].content == "hello"
        assert post.interaction is None and post.author is server.bot_user
        assert len(server.requests_to("PATCH", r"^/channels/\d+/messages/\d+$")) == 1
    server.assert_clean()


async def test_history_pages_as_discord_does(world: World) -> None:
    """A channel's history as Discord serves it: 1 to 100 messages a request, newest first,
    from one of `before`, `after` or `around`. discord.py pages through 250 messages either
    way and stops at a bound; a bad query is Discord's 400."""
    server = world.server
    ids = [(await server.post_message(world.channel, world.bob, f"m{i}")).id for i in range(250)]
    async with run_bot(server, world.bot) as running:
        bot = running.bot
        channel = bot.get_partial_messageable(world.channel.id)
        assert [m.id async for m in channel.history(limit=None)] == ids[::-1]
        after = channel.history(limit=None, after=discord.Object(ids[9]))
        assert [m.id async for m in after] == ids[10:]  # oldest first, as discord.py yields
        window = channel.history(
            limit=None, after=discord.Object(ids[9]), before=discord.Object(ids[150])
        )
        assert [m.id async for m in window] == ids[10:150]
        around = channel.history(limit=5, around=discord.Object(ids[100]))
        assert [m.id async for m in around] == ids[98:103][::-1]
        route = Route("GET", "/channels/{channel_id}/messages", channel_id=world.channel.id)
        bad = ({"limit": 101}, {"limit": 0}, {"before": ids[5], "after": ids[1]})
        for query in bad:
            with pytest.raises(discord.HTTPException) as refused:
                await bot.http.request(route, params=query)
            assert (refused.value.status, refused.value.code) == (400, 50035), query
    pages = server.requests_to("GET", r"^/channels/\d+/messages$")
    assert [r.status for r in pages].count(400) == len(bad)
    server.assert_clean(expected={"invalid_payload"})


async def test_invalid_session_reidentifies_on_the_test_server(world: World) -> None:
    server = world.server
    async with run_bot(server, world.bot):
        await server.invalidate_session()
        await server.wait_for_identify(2)
        interaction = await server.invoke("ping", user=world.alice)
        await interaction.wait_for_followup()
    server.assert_clean()


async def test_crash_in_gateway_loop_is_reported(world: World) -> None:
    server = world.server
    with pytest.raises(AssertionError, match=r"bot.start\(\) crashed"):
        async with run_bot(server, world.bot):
            await server.dispatch("GUILD_CREATE", {"unavailable": False})  # no "id": KeyError
            with pytest.raises(AssertionError, match=r"bot.start\(\) ended with KeyError"):
                await server.wait_until(lambda: False, what="anything")
    server.assert_clean(expected={"bot_crashed"})
