"""Creating, editing and deleting messages the way Discord does, with its body limits.

Shared by the channel routes, the interaction callback and the interaction webhooks so the same
message rules (content length, embeds, components, files, who gets pinged) apply everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .attachments import Attachment, guess_content_type
from .errors import EMPTY_MESSAGE, INVALID_FORM_BODY, REQUEST_TOO_LARGE, ApiError, form_error
from .flags import (
    FLAG_COMPONENTS_V2,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FLAG_SUPPRESS_EMBEDS,
    FLAG_SUPPRESS_NOTIFICATIONS,
)
from .recording import UploadedFile
from .rules import Rules, ViolationKind
from .state import Channel, Message, MessageVersion, State
from .users import User

USER_MENTION = re.compile(r"<@!?(\d+)>")
ROLE_MENTION = re.compile(r"<@&(\d+)>")
# Flags a bot may set when sending; LOADING is only set by the server for deferred responses.
SENDABLE_FLAGS = (
    FLAG_SUPPRESS_EMBEDS | FLAG_EPHEMERAL | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_COMPONENTS_V2
)


class MessageStore:
    """Applies message bodies to :class:`Message` objects and keeps :class:`State` indexes."""

    def __init__(self, state: State, attachment_url: Callable[[Attachment, Channel], str]) -> None:
        self.state = state
        self._attachment_url = attachment_url

    @property
    def rules(self) -> Rules:
        """The world's rules, read on each use (a test may replace them)."""
        return self.state.rules

    # -- validation -------------------------------------------------------------------------

    def check_files(self, files: list[UploadedFile], size_limit: int) -> None:
        """Discord's per-message file count and per-file size limits."""
        if self.rules.max_files is not None and len(files) > self.rules.max_files:
            raise ApiError(
                400,
                INVALID_FORM_BODY,
                "Invalid Form Body",
                violation=ViolationKind.TOO_MANY_FILES,
                detail=f"{len(files)} files, at most {self.rules.max_files} allowed",
                errors={
                    "files": {
                        "_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Too many files"}]
                    }
                },
            )
        if self.rules.enforce_attachment_size:
            for f in files:
                if len(f.data) > size_limit:
                    raise ApiError(
                        413,
                        REQUEST_TOO_LARGE,
                        "Request entity too large",
                        violation=ViolationKind.ATTACHMENT_TOO_LARGE,
                        detail=f"{f.filename} is {len(f.data)} bytes, limit {size_limit}",
                    )

    def validate(self, body: dict[str, Any], *, creating: bool, has_files: bool) -> None:
        """Raise 400 for bodies Discord refuses (only when ``rules.validate_payloads``)."""
        if not self.rules.validate_payloads:
            return
        content = body.get("content")
        if content is not None and not isinstance(content, str):
            raise form_error("content", "Must be a string")
        if content is not None and len(content) > 2000:
            raise form_error("content", "Must be 2000 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
        embeds = body.get("embeds") or []
        _validate_embeds(embeds)
        flags = int(body.get("flags") or 0)
        _validate_components(body.get("components") or [], v2=bool(flags & FLAG_COMPONENTS_V2))
        mentions = body.get("allowed_mentions")
        if isinstance(mentions, dict):
            parse = mentions.get("parse") or []
            for key in ("users", "roles"):
                if key in parse and mentions.get(key):
                    raise form_error(
                        "allowed_mentions",
                        f"parse:[{key}] and {key}: [ids] are mutually exclusive.",
                    )
        if creating and not (
            content
            or embeds
            or body.get("components")
            or has_files
            or body.get("sticker_ids")
            or body.get("poll")
        ):
            raise ApiError(
                400,
                EMPTY_MESSAGE,
                "Cannot send an empty message",
                violation=ViolationKind.INVALID_PAYLOAD,
            )

    # -- mutations ---------------------------------------------------------------------------

    def create(
        self,
        channel: Channel,
        author: User,
        body: dict[str, Any],
        files: list[UploadedFile],
        *,
        size_limit: int,
        flags: int | None = None,
        validate: bool = True,
        **extra: Any,
    ) -> Message:
        """Store a new message from a create body (``POST`` channel/webhook, callback type 4)."""
        self.check_files(files, size_limit)
        if validate:
            self.validate(body, creating=True, has_files=bool(files))
        message = Message(
            id=self.state.ids.next(),
            channel=channel,
            author=author,
            content=body.get("content") or "",
            embeds=list(body.get("embeds") or []),
            components=list(body.get("components") or []),
            flags=flags if flags is not None else int(body.get("flags") or 0) & SENDABLE_FLAGS,
            allowed_mentions=body.get("allowed_mentions"),
            tts=bool(body.get("tts")),
            created_at=self.state.clock.utcnow(),
            message_reference=body.get("message_reference"),
            **extra,
        )
        message.attachments = self._attachments_for(message, body, files, keep_existing=False)
        if not message.loading:
            self.compute_pings(message)
        channel.messages.append(message)
        self.state.messages[message.id] = message
        return message

    def edit(
        self, message: Message, body: dict[str, Any], files: list[UploadedFile], *, size_limit: int
    ) -> Message:
        """Apply an edit body (``PATCH``); filling a deferred "thinking" message clears LOADING."""
        self.check_files(files, size_limit)
        self.validate(body, creating=False, has_files=bool(files))
        was_loading = message.loading
        message.history.append(
            MessageVersion(
                content=message.content,
                embeds=message.embeds,
                components=message.components,
                attachment_ids=[a.id for a in message.attachments],
                flags=message.flags,
                at=self.state.clock.utcnow(),
            )
        )
        if "content" in body:
            message.content = body["content"] or ""
        if "embeds" in body:
            message.embeds = list(body["embeds"] or [])
        if "components" in body:
            message.components = list(body["components"] or [])
        if "allowed_mentions" in body:
            message.allowed_mentions = body["allowed_mentions"]
        if body.get("flags") is not None:
            editable = FLAG_SUPPRESS_EMBEDS | FLAG_COMPONENTS_V2
            message.flags = (message.flags & ~editable) | (int(body["flags"]) & editable)
        if "attachments" in body or files:
            message.attachments = self._attachments_for(message, body, files, keep_existing=True)
        message.flags &= ~FLAG_LOADING
        message.edited_at = None if was_loading else self.state.clock.utcnow()
        if was_loading:
            # Filling a deferred response is the real "send": it pings, later edits do not.
            self.compute_pings(message)
        return message

    def delete(self, message: Message) -> None:
        message.deleted = True

    # -- helpers -----------------------------------------------------------------------------

    def _attachments_for(
        self,
        message: Message,
        body: dict[str, Any],
        files: list[UploadedFile],
        *,
        keep_existing: bool,
    ) -> list[Attachment]:
        by_field = {f.field_name: f for f in files}
        existing = {a.id: a for a in message.attachments} if keep_existing else {}
        result: list[Attachment] = []
        used: set[str] = set()
        entries = body.get("attachments")
        if entries is None:
            result.extend(existing.values())
        else:
            for entry in entries:
                raw_id = str(entry.get("id", ""))
                if raw_id.isdigit() and int(raw_id) in existing:
                    result.append(existing[int(raw_id)])
                    continue
                upload = by_field.get(f"files[{raw_id}]")
                if upload is None:
                    continue
                used.add(upload.field_name)
                filename = entry.get("filename") or upload.filename
                result.append(self._store(message, upload, filename, entry.get("description")))
        for upload in files:
            if upload.field_name not in used:
                result.append(self._store(message, upload, upload.filename, None))
        return result

    def _store(
        self, message: Message, upload: UploadedFile, filename: str, description: str | None
    ) -> Attachment:
        attachment = Attachment(
            id=self.state.ids.next(),
            filename=filename,
            data=upload.data,
            content_type=guess_content_type(filename, upload.content_type),
            url="",
            description=description,
        )
        attachment.url = self._attachment_url(attachment, message.channel)
        self.state.attachments[attachment.id] = attachment
        return attachment

    def compute_pings(self, message: Message) -> None:
        """Who Discord would notify, from content and ``allowed_mentions`` (ephemeral: nobody)."""
        if message.ephemeral:
            message.pinged_user_ids, message.pinged_role_ids, message.pings_everyone = (
                set(),
                set(),
                False,
            )
            return
        users = {int(x) for x in USER_MENTION.findall(message.content)}
        roles = {int(x) for x in ROLE_MENTION.findall(message.content)}
        everyone = "@everyone" in message.content or "@here" in message.content
        allowed = message.allowed_mentions
        if allowed is not None:
            parse = set(allowed.get("parse") or [])
            allowed_users = {int(x) for x in allowed.get("users") or []}
            allowed_roles = {int(x) for x in allowed.get("roles") or []}
            users = users if "users" in parse else users & allowed_users
            roles = roles if "roles" in parse else roles & allowed_roles
            everyone = everyone and "everyone" in parse
            reference = message.message_reference
            if reference and allowed.get("replied_user"):
                replied = self.state.messages.get(int(reference.get("message_id", 0)))
                if replied is not None:
                    users.add(replied.author.id)
        elif message.message_reference:
            replied = self.state.messages.get(int(message.message_reference.get("message_id", 0)))
            if replied is not None:
                users.add(replied.author.id)
        message.pinged_user_ids = users
        message.pinged_role_ids = roles
        message.pings_everyone = everyone


def _validate_embeds(embeds: list[Any]) -> None:
    if len(embeds) > 10:
        raise form_error("embeds", "Must be 10 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
    total = 0
    for index, embed in enumerate(embeds):
        if not isinstance(embed, dict):
            raise form_error(f"embeds.{index}", "Must be an object")
        for key, limit in (("title", 256), ("description", 4096)):
            value = embed.get(key) or ""
            if len(value) > limit:
                raise form_error(f"embeds.{index}.{key}", f"Must be {limit} or fewer in length.")
            total += len(value)
        fields = embed.get("fields") or []
        if len(fields) > 25:
            raise form_error(f"embeds.{index}.fields", "Must be 25 or fewer in length.")
        for f in fields:
            total += len(f.get("name") or "") + len(f.get("value") or "")
        total += len((embed.get("footer") or {}).get("text") or "")
        total += len((embed.get("author") or {}).get("name") or "")
    if total > 6000:
        raise form_error("embeds", "Embed size exceeds maximum size of 6000")


def _validate_components(components: list[Any], *, v2: bool) -> None:
    if not v2 and len(components) > 5:
        raise form_error("components", "Must be 5 or fewer in length.", "BASE_TYPE_MAX_LENGTH")
    seen: set[str] = set()
    count = 0
    stack: list[tuple[str, Any]] = [(f"components.{i}", c) for i, c in enumerate(components)]
    while stack:
        where, component = stack.pop()
        count += 1
        if not isinstance(component, dict) or "type" not in component:
            raise form_error(where, "Invalid component")
        ctype = component["type"]
        if not v2 and where.count(".") == 1 and ctype != 1:
            raise form_error(where, "Top-level components must be action rows")
        children = component.get("components") or []
        if ctype == 1 and len(children) > 5:
            raise form_error(f"{where}.components", "Must be 5 or fewer in length.")
        custom_id = component.get("custom_id")
        if custom_id is not None:
            if not custom_id or len(custom_id) > 100:
                raise form_error(f"{where}.custom_id", "Must be between 1 and 100 in length.")
            if custom_id in seen:
                raise form_error(
                    f"{where}.custom_id",
                    "Component custom id cannot be duplicated",
                    "COMPONENT_CUSTOM_ID_DUPLICATED",
                )
            seen.add(custom_id)
        if ctype == 2:
            style = component.get("style")
            if style == 5 and not component.get("url"):
                raise form_error(f"{where}.url", "Link buttons need a url")
            if style not in (5, 6) and custom_id is None:
                raise form_error(f"{where}.custom_id", "Non-link buttons need a custom_id")
            if len(component.get("label") or "") > 80:
                raise form_error(f"{where}.label", "Must be 80 or fewer in length.")
        stack.extend((f"{where}.components.{i}", c) for i, c in enumerate(children))
        for key in ("component", "accessory"):
            if key in component:
                stack.append((f"{where}.{key}", component[key]))
    if v2 and count > 40:
        raise form_error("components", "Must be 40 or fewer in total.")


__all__ = ["ROLE_MENTION", "SENDABLE_FLAGS", "USER_MENTION", "MessageStore"]
