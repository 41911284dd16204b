"""A Discord-compatible server (REST + gateway) for end-to-end tests of the real discord.py client.

The server runs in the test's event loop on 127.0.0.1 (random port). The bot under test is an
ordinary ``commands.AutoShardedBot``; pointing ``discord.http.Route.BASE`` at
``server.api_base_url`` moves everything (the gateway URL comes from ``GET /gateway/bot``).
Discord's rules (3 s to answer, 15 min tokens, file limits, one initial response, edit rate
limits) are enforced on a clock tests can advance; every request is recorded, and
:meth:`DiscordTestServer.assert_clean` fails on rule violations and unimplemented routes.

Tests never sleep: every ``wait_*`` re-checks its predicate on each server change and fails with
an ``AssertionError`` describing what it saw.

Example (a whole bot test; see ``tests/test_discord_server.py`` for more)::

    import io

    import discord
    from discord.ext import commands

    from testkit.discord_server import MANAGE_GUILD, DiscordTestServer, run_bot

    PNG = b"image bytes"  # anything; the server stores and serves it unchanged

    async def test_ping() -> None:
        async with DiscordTestServer() as server:
            server.create_application("imagine-bot")
            guild = server.create_guild("Test Guild")
            channel = guild.create_text_channel("art", nsfw=False)
            mods = guild.create_role("Moderator", permissions=MANAGE_GUILD)
            alice = server.create_user("alice")
            guild.add_member(alice, roles=[mods])

            bot = commands.AutoShardedBot(
                command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0.05
            )

            @bot.tree.command(description="Ping")
            async def ping(interaction: discord.Interaction) -> None:
                await interaction.response.defer()
                await interaction.followup.send("pong", file=discord.File(io.BytesIO(PNG), "p.png"))

            async def setup_hook() -> None:
                await bot.tree.sync()

            bot.setup_hook = setup_hook

            async with run_bot(server, bot):  # sets Route.BASE, starts, awaits on_ready
                assert server.synced_command("ping")["id"]
                interaction = await server.invoke("ping", user=alice, channel=channel)
                message = await interaction.wait_for_followup(lambda m: bool(m.attachments))
                assert interaction.deferred and not interaction.ephemeral
                assert message.attachment("p.png").data == PNG
                assert message.pinged_user_ids == set()
            server.assert_clean()

Rules are on by default; turn one off with ``server.rules.edit_rate_limit = None`` (see
:class:`Rules`), or accept a provoked one with ``server.assert_clean(expected={"late_response"})``.

The modules, bottom up: the world (``state`` with ``users``, ``attachments`` and ``flags``, on
the ``clock`` and ``rules``); its JSON shapes (``payloads``); what is done to it (``messages``,
``commands``, ``interactions``); the handlers, which depend on the world and the small
``notifier.Notifier``, never on the server (``gateway`` and the ``rest`` package); and
``server``, which wires them and offers the test API in four parts: ``world_setup``,
``actions`` (payloads built by ``invocation``), ``faults`` and ``checks`` (records and waits).
"""

from .attachments import Attachment
from .clock import ServerClock
from .commands import AttachmentOption
from .errors import ApiError
from .flags import (
    ADMINISTRATOR,
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_MEMBER_PERMISSIONS,
    MANAGE_GUILD,
)
from .gateway import Gateway, GatewaySession
from .interactions import CallbackRecord, Interaction
from .recording import Failure, FailureInjection, RecordedRequest, UploadedFile
from .rules import RateLimit, Rules, Violation, ViolationKind
from .runner import RunningBot, run_bot
from .server import DiscordTestServer
from .state import Channel, Guild, Member, Message, Role
from .users import Application, User

__all__ = [
    "ADMINISTRATOR",
    "DEFAULT_BOT_PERMISSIONS",
    "DEFAULT_MEMBER_PERMISSIONS",
    "MANAGE_GUILD",
    "ApiError",
    "Application",
    "Attachment",
    "AttachmentOption",
    "CallbackRecord",
    "Channel",
    "DiscordTestServer",
    "Failure",
    "FailureInjection",
    "Gateway",
    "GatewaySession",
    "Guild",
    "Interaction",
    "Member",
    "Message",
    "RateLimit",
    "RecordedRequest",
    "Role",
    "Rules",
    "RunningBot",
    "ServerClock",
    "UploadedFile",
    "User",
    "Violation",
    "ViolationKind",
    "run_bot",
]
