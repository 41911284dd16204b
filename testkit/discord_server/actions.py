"""User actions, the second part of the test API: run a command, ask for autocomplete, click,
submit a modal, post or delete a message. Each sends what the Discord client would send."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Unpack

from .gateway import Gateway
from .interactions import Interaction, InteractionLog
from .invocation import InteractionPayloads, Invocation, UserLike
from .messages import MessageStore
from .state import DEFAULT_ATTACHMENT_SIZE_LIMIT, Channel, Message, State
from .waiting import Changes


class UserActions:
    """Part of :class:`~testkit.discord_server.server.DiscordTestServer`."""

    state: State
    gateway: Gateway
    interaction_log: InteractionLog
    interaction_payloads: InteractionPayloads
    message_store: MessageStore
    changes: Changes

    # -- interactions --------------------------------------------------------------------------

    def build_command_interaction(
        self,
        command: str,
        *,
        user: UserLike,
        options: Mapping[str, Any] | None = None,
        focused: str | None = None,
        **how: Unpack[Invocation],
    ) -> dict[str, Any]:
        """The INTERACTION_CREATE ``d`` that :meth:`invoke` would send (to tamper with, then
        :meth:`dispatch_interaction`); with ``focused``, the autocomplete for that option."""
        return self.interaction_payloads.command(command, user, options or {}, focused, how)

    async def invoke(
        self,
        command: str,
        *,
        user: UserLike,
        options: Mapping[str, Any] | None = None,
        **how: Unpack[Invocation],
    ) -> Interaction:
        """Run ``/command`` as ``user`` (``"quota set"`` or ``subcommand="set"`` for subcommands).

        ``options`` are encoded with the types the bot synced: str, int, bool, float, a
        :class:`User`/:class:`Member` (resolved users/members included), :class:`Channel`,
        :class:`Role`, or :class:`AttachmentOption`. Without ``guild``/``channel`` the only guild
        and its first text channel are used; pass a DM channel for a DM invocation. ``locale``
        (``"en-US"``) and ``attachment_size_limit`` (the guild's) go in the payload;
        ``validate=False`` sends a command the user could not run (Discord would not).
        """
        payload = self.build_command_interaction(command, user=user, options=options, **how)
        return await self.dispatch_interaction(payload)

    async def autocomplete(
        self,
        command: str,
        *,
        user: UserLike,
        focused: str,
        options: Mapping[str, Any] | None = None,
        **how: Unpack[Invocation],
    ) -> Interaction:
        """Send a type-4 autocomplete for option ``focused``; see ``.autocomplete_choices``."""
        values = dict(options or {})
        values.setdefault(focused, "")
        payload = self.build_command_interaction(
            command, user=user, options=values, focused=focused, **how
        )
        return await self.dispatch_interaction(payload)

    async def click(
        self,
        message: Message,
        custom_id: str,
        *,
        user: UserLike,
        values: Sequence[str] | None = None,
        validate: bool = True,
    ) -> Interaction:
        """Press the button (or pick ``values`` in the select) with ``custom_id`` on ``message``.

        ``validate=False`` forges a click Discord would not send (a disabled button, someone
        else's ephemeral message, a ``custom_id`` the message does not have), to test that the
        bot checks who clicked and what.
        """
        payload = self.interaction_payloads.click(
            message, custom_id, user=user, values=values, validate=validate
        )
        return await self.dispatch_interaction(payload, source_message=message)

    async def submit_modal(
        self, interaction: Interaction, values: Mapping[str, str], *, user: UserLike | None = None
    ) -> Interaction:
        """Submit the modal the bot opened on ``interaction`` with text input ``values``."""
        payload = self.interaction_payloads.modal_submit(interaction, values, user=user)
        return await self.dispatch_interaction(payload, source_message=interaction.source_message)

    async def dispatch_interaction(
        self, payload: dict[str, Any], *, source_message: Message | None = None
    ) -> Interaction:
        """Send any INTERACTION_CREATE payload (forged ones too) and track it like the others.

        Sending a payload whose ``id`` was already sent re-delivers that interaction (as after a
        duplicated gateway event) and returns the existing handle, so a second answer from the
        bot is caught as ``already_acknowledged``.
        """
        interaction_id = int(payload["id"])
        guild = self.state.guilds.get(int(payload["guild_id"])) if payload.get("guild_id") else None
        guild_id = guild.id if guild else None
        if self.gateway.session_for(guild_id) is None:
            raise RuntimeError(
                "no gateway session to send the interaction to: "
                "start the bot (and await its readiness) first"
            )
        existing = self.interaction_log.by_id.get(interaction_id)
        if existing is not None:
            self.gateway.dispatch("INTERACTION_CREATE", payload, guild_id=guild_id)
            return existing
        interaction = self.interaction_log.open(payload, source_message=source_message)
        self.gateway.dispatch("INTERACTION_CREATE", payload, guild_id=guild_id)
        return interaction

    def interaction(self, interaction_id: int) -> Interaction:
        return self.interaction_log.by_id[interaction_id]

    # -- messages ------------------------------------------------------------------------------

    async def delete_message(self, channel: Channel | int, message: Message | int) -> None:
        """A user (or moderator) deletes a message: it is gone and MESSAGE_DELETE is sent."""
        ch = self.state.channel(channel)
        msg = message if isinstance(message, Message) else self.state.messages[message]
        if msg.channel is not ch:
            raise ValueError(f"{msg!r} is not in {ch!r}")
        self.message_store.delete(msg)
        self.gateway.message_event("MESSAGE_DELETE", msg)
        self.changes.notify()

    async def post_message(
        self, channel: Channel | int, user: UserLike, content: str, **fields: Any
    ) -> Message:
        """A user posts a message (MESSAGE_CREATE; content hidden without MESSAGE_CONTENT)."""
        ch = self.state.channel(channel)
        author = self.state.user(user)
        body = {"content": content, **fields}
        message = self.message_store.create(
            ch, author, body, [], size_limit=DEFAULT_ATTACHMENT_SIZE_LIMIT
        )
        self.gateway.message_event("MESSAGE_CREATE", message)
        self.changes.notify()
        return message


__all__ = ["UserActions"]
