"""Synced application commands, and turning ``invoke(...)`` arguments into interaction data.

Interaction options are built from the definitions the bot synced, never from the test's guess:
a test that passes a string where the bot declared an integer fails here, exactly as it would be
impossible in the Discord client, instead of reaching the bot with a payload Discord never sends.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .attachments import Attachment
from .errors import form_error
from .payloads import (
    attachment_payload,
    channel_payload,
    member_payload,
    role_payload,
    user_payload,
)
from .state import Channel, Guild, Member, Role, State
from .users import User

SUB_COMMAND = 1
SUB_COMMAND_GROUP = 2
STRING = 3
INTEGER = 4
BOOLEAN = 5
USER = 6
CHANNEL = 7
ROLE = 8
MENTIONABLE = 9
NUMBER = 10
ATTACHMENT = 11

NAME_RE = re.compile(r"^[-_\w]{1,32}$")


@dataclass(frozen=True)
class AttachmentOption:
    """Value for an attachment (type 11) option: the file a user would upload with the command."""

    filename: str
    data: bytes
    content_type: str | None = None


class CommandRegistry:
    """Global and per-guild command sets, as stored by ``PUT .../commands`` (bulk overwrite)."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.global_commands: dict[str, dict[str, Any]] = {}
        self.guild_commands: dict[int, dict[str, dict[str, Any]]] = {}
        self.sync_count = 0

    def bulk_overwrite(
        self, definitions: list[dict[str, Any]], *, guild_id: int | None, validate: bool
    ) -> list[dict[str, Any]]:
        """Replace the set; a name that existed keeps its id, as on Discord."""
        app = self.state.require_application()
        if validate:
            validate_definitions(definitions)
        current = (
            self.global_commands if guild_id is None else self.guild_commands.get(guild_id, {})
        )
        stored: dict[str, dict[str, Any]] = {}
        for definition in definitions:
            command_type = definition.get("type", 1)
            old = current.get(definition["name"])
            command: dict[str, Any] = {
                "type": command_type,
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "dm_permission": True,
                "nsfw": False,
                **definition,
                "id": old["id"]
                if old and old.get("type", 1) == command_type
                else str(self.state.ids.next()),
                "application_id": str(app.id),
                "version": str(self.state.ids.next()),
            }
            if guild_id is not None:
                command["guild_id"] = str(guild_id)
            stored[_key(command)] = command
        if guild_id is None:
            self.global_commands = stored
        else:
            self.guild_commands[guild_id] = stored
        self.sync_count += 1
        return list(stored.values())

    def list(self, guild_id: int | None = None) -> list[dict[str, Any]]:
        source = self.global_commands if guild_id is None else self.guild_commands.get(guild_id, {})
        return list(source.values())

    def find(self, name: str, guild_id: int | None, command_type: int = 1) -> dict[str, Any]:
        """A synced command, preferring the guild's own set, as Discord shows them to users."""
        key = name if command_type == 1 else f"{command_type}:{name}"
        if guild_id is not None and key in self.guild_commands.get(guild_id, {}):
            return self.guild_commands[guild_id][key]
        if key in self.global_commands:
            return self.global_commands[key]
        known = sorted(self.global_commands) + sorted(
            f"{n} (guild {g})" for g, cmds in self.guild_commands.items() for n in cmds
        )
        raise LookupError(
            f"command {name!r} was not synced by the bot; synced: {known or 'nothing'}"
        )


def _key(command: Mapping[str, Any]) -> str:
    command_type = command.get("type", 1)
    return command["name"] if command_type == 1 else f"{command_type}:{command['name']}"


def validate_definitions(definitions: list[dict[str, Any]]) -> None:
    """The limits Discord applies on sync (names, descriptions, option counts, choices)."""
    if len(definitions) > 100:
        raise form_error("_root", "Must be 100 or fewer in length.")
    for i, definition in enumerate(definitions):
        name = definition.get("name", "")
        command_type = definition.get("type", 1)
        if command_type == 1:
            _validate_named(f"{i}", definition, lowercase=True)
        elif not 1 <= len(name) <= 32:
            raise form_error(f"{i}.name", "Must be between 1 and 32 in length.")
        _validate_options(f"{i}.options", definition.get("options") or [])


def _validate_named(where: str, item: Mapping[str, Any], *, lowercase: bool) -> None:
    name = item.get("name", "")
    if not NAME_RE.match(name) or (lowercase and name != name.lower()):
        raise form_error(
            f"{where}.name", f"Invalid name {name!r}", "APPLICATION_COMMAND_INVALID_NAME"
        )
    if not 1 <= len(item.get("description", "")) <= 100:
        raise form_error(f"{where}.description", "Must be between 1 and 100 in length.")


def _validate_options(where: str, options: list[dict[str, Any]]) -> None:
    if len(options) > 25:
        raise form_error(where, "Must be 25 or fewer in length.")
    seen_optional = False
    for i, option in enumerate(options):
        _validate_named(f"{where}.{i}", option, lowercase=True)
        if option.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP):
            _validate_options(f"{where}.{i}.options", option.get("options") or [])
            continue
        if option.get("required"):
            if seen_optional:
                raise form_error(
                    f"{where}.{i}", "Required options must be placed before non-required options"
                )
        else:
            seen_optional = True
        choices = option.get("choices") or []
        if len(choices) > 25:
            raise form_error(f"{where}.{i}.choices", "Must be 25 or fewer in length.")
        if choices and option.get("autocomplete"):
            raise form_error(f"{where}.{i}", "Autocomplete and choices are mutually exclusive")


@dataclass
class BuiltOptions:
    """Option payloads plus the ``resolved`` map Discord sends with user/channel/role options."""

    options: list[dict[str, Any]]
    resolved: dict[str, dict[str, Any]]


def build_options(
    state: State,
    command: Mapping[str, Any],
    path: Sequence[str],
    values: Mapping[str, Any],
    *,
    guild: Guild | None,
    focused: str | None = None,
    validate: bool = True,
    attachment_url: Callable[[Attachment], str] | None = None,
) -> BuiltOptions:
    """Encode ``values`` against the synced ``command`` (walking ``path`` into subcommands)."""
    resolved: dict[str, dict[str, Any]] = {}
    definitions: list[dict[str, Any]] = list(command.get("options") or [])
    trail = [command["name"]]
    chain: list[dict[str, Any]] = []
    for name in path:
        found = next(
            (
                o
                for o in definitions
                if o["name"] == name and o.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP)
            ),
            None,
        )
        if found is None:
            subs = [
                o["name"] for o in definitions if o.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP)
            ]
            raise ValueError(f"/{' '.join(trail)} has no subcommand {name!r}; it has {subs}")
        trail.append(name)
        chain.append({"type": found["type"], "name": name, "options": []})
        definitions = list(found.get("options") or [])
    if any(o.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP) for o in definitions):
        subs = [o["name"] for o in definitions]
        raise ValueError(f"/{' '.join(trail)} needs a subcommand: one of {subs}")

    by_name = {o["name"]: o for o in definitions}
    unknown = set(values) - set(by_name)
    if unknown:
        raise ValueError(
            f"/{' '.join(trail)} has no option(s) {sorted(unknown)}; it has {sorted(by_name)}"
        )
    if validate and focused is None:
        missing = [o["name"] for o in definitions if o.get("required") and o["name"] not in values]
        if missing:
            raise ValueError(f"/{' '.join(trail)} is missing required option(s) {missing}")

    encoded: list[dict[str, Any]] = []
    for name, value in values.items():
        definition = by_name[name]
        is_focused = name == focused
        if is_focused:
            encoded.append(
                {"type": definition["type"], "name": name, "value": str(value), "focused": True}
            )
            continue
        item = _encode_option(
            state, definition, value, guild, resolved, validate, attachment_url, trail
        )
        encoded.append(item)

    options = encoded
    for level in reversed(chain):
        level["options"] = options
        options = [level]
    return BuiltOptions(options=options, resolved=resolved)


def _encode_option(
    state: State,
    definition: Mapping[str, Any],
    value: Any,
    guild: Guild | None,
    resolved: dict[str, dict[str, Any]],
    validate: bool,
    attachment_url: Callable[[Attachment], str] | None,
    trail: list[str],
) -> dict[str, Any]:
    option_type = definition["type"]
    name = definition["name"]
    where = f"option {name!r} of /{' '.join(trail)}"

    def fail(message: str) -> ValueError:
        return ValueError(f"{where}: {message} (got {value!r})")

    if option_type == STRING:
        if not isinstance(value, str):
            raise fail("expected str (type 3)")
        if validate:
            if "min_length" in definition and len(value) < definition["min_length"]:
                raise fail(f"shorter than min_length {definition['min_length']}")
            if "max_length" in definition and len(value) > definition["max_length"]:
                raise fail(f"longer than max_length {definition['max_length']}")
        out: Any = value
    elif option_type == INTEGER:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("expected int (type 4)")
        out = value
    elif option_type == NUMBER:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail("expected float (type 10)")
        out = value
    elif option_type == BOOLEAN:
        if not isinstance(value, bool):
            raise fail("expected bool (type 5)")
        out = value
    elif option_type in (USER, MENTIONABLE) and isinstance(value, User | Member | int):
        user = state.user(value)
        resolved.setdefault("users", {})[str(user.id)] = user_payload(user)
        if guild is not None and user.id in guild.members:
            member = guild.members[user.id]
            resolved.setdefault("members", {})[str(user.id)] = member_payload(
                member, with_user=False, with_permissions=True
            )
        out = str(user.id)
    elif option_type in (ROLE, MENTIONABLE) and isinstance(value, Role):
        resolved.setdefault("roles", {})[str(value.id)] = role_payload(value)
        out = str(value.id)
    elif option_type == CHANNEL and isinstance(value, Channel):
        data = channel_payload(
            value, permissions=value.guild.everyone_role.permissions if value.guild else 0
        )
        resolved.setdefault("channels", {})[str(value.id)] = data
        out = str(value.id)
    elif option_type == ATTACHMENT and isinstance(value, AttachmentOption):
        attachment = Attachment(
            id=state.ids.next(),
            filename=value.filename,
            data=value.data,
            content_type=value.content_type,
            url="",
        )
        attachment.url = attachment_url(attachment) if attachment_url else ""
        state.attachments[attachment.id] = attachment
        resolved.setdefault("attachments", {})[str(attachment.id)] = attachment_payload(attachment)
        out = str(attachment.id)
    else:
        raise fail(f"cannot encode a value for option type {option_type}")

    if validate and option_type in (INTEGER, NUMBER):
        if "min_value" in definition and out < definition["min_value"]:
            raise fail(f"below min_value {definition['min_value']}")
        if "max_value" in definition and out > definition["max_value"]:
            raise fail(f"above max_value {definition['max_value']}")
    choices = definition.get("choices")
    if validate and choices and out not in [c["value"] for c in choices]:
        raise fail(f"not one of the choices {[c['value'] for c in choices]}")
    return {"type": option_type, "name": name, "value": out}


__all__ = [
    "ATTACHMENT",
    "BOOLEAN",
    "CHANNEL",
    "INTEGER",
    "MENTIONABLE",
    "NUMBER",
    "ROLE",
    "STRING",
    "SUB_COMMAND",
    "SUB_COMMAND_GROUP",
    "USER",
    "AttachmentOption",
    "BuiltOptions",
    "CommandRegistry",
    "build_options",
    "validate_definitions",
]
