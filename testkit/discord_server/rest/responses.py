"""An interaction's answers: ``POST /interactions/{id}/{token}/callback``, the bot's one initial
response (once, within the deadline, a type this interaction allows), then the webhook routes
``/webhooks/{app_id}/{token}`` for its followups and its ``@original`` message, with Discord's
token checks (an interaction that exists, acknowledged, not 15 minutes old)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import (
    ALREADY_ACKNOWLEDGED,
    INVALID_FORM_BODY,
    INVALID_WEBHOOK_TOKEN,
    UNKNOWN_INTERACTION,
    UNKNOWN_MESSAGE,
    UNKNOWN_WEBHOOK,
    ApiError,
)
from ..flags import FLAG_EPHEMERAL, FLAG_LOADING
from ..interactions import (
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    AUTOCOMPLETE_RESULT,
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    DEFERRED_UPDATE_MESSAGE,
    MESSAGE_COMPONENT,
    MODAL,
    MODAL_SUBMIT,
    UPDATE_MESSAGE,
    CallbackRecord,
    Interaction,
    InteractionLog,
)
from ..messages import MessageStore
from ..notifier import Notifier
from ..payloads import message_payload
from ..recording import RecordedRequest, UploadedFile
from ..rules import ViolationKind
from ..state import Message, State
from .base import (
    FILES,
    INTERACTION,
    RECORD,
    Route,
    json_object,
    json_response,
    no_content,
    snowflake,
)
from .limits import EditLimiter

# Which callback types each interaction type accepts.
ALLOWED_CALLBACKS: dict[int, set[int]] = {
    APPLICATION_COMMAND: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL},
    MESSAGE_COMPONENT: {
        CHANNEL_MESSAGE,
        DEFERRED_CHANNEL_MESSAGE,
        DEFERRED_UPDATE_MESSAGE,
        UPDATE_MESSAGE,
        MODAL,
    },
    AUTOCOMPLETE: {AUTOCOMPLETE_RESULT},
    MODAL_SUBMIT: {
        CHANNEL_MESSAGE,
        DEFERRED_CHANNEL_MESSAGE,
        DEFERRED_UPDATE_MESSAGE,
        UPDATE_MESSAGE,
    },
}


class InteractionResponses:
    """The callback and webhook routes of the interactions the server sent."""

    def __init__(
        self,
        state: State,
        notifier: Notifier,
        interactions: InteractionLog,
        messages: MessageStore,
        edits: EditLimiter,
    ) -> None:
        self.state = state
        self.notifier = notifier
        self.interactions = interactions
        self.messages = messages
        self.edits = edits

    def routes(self) -> list[Route]:
        one = "/webhooks/{app_id}/{token}/messages/{message_id}"
        return [
            ("POST", "/interactions/{interaction_id}/{token}/callback", self.callback),
            ("POST", "/webhooks/{app_id}/{token}", self.execute),
            ("GET", one, self.get_message),
            ("PATCH", one, self.edit_message),
            ("DELETE", one, self.delete_message),
        ]

    # -- the initial response ------------------------------------------------------------------

    async def callback(self, request: web.Request) -> web.Response:
        record: RecordedRequest = request[RECORD]
        interaction = self.interactions.by_id.get(snowflake(request, "interaction_id"))
        if interaction is None or interaction.token != request.match_info["token"]:
            raise ApiError(
                404,
                UNKNOWN_INTERACTION,
                "Unknown interaction",
                violation=ViolationKind.INVALID_CALLBACK,
                detail="callback for an interaction id/token the server never sent",
            )
        request[INTERACTION] = interaction
        interaction.requests.append(record)
        body = json_object(request)
        callback_type = int(body.get("type") or 0)
        data = body.get("data")
        files: list[UploadedFile] = request[FILES]
        callback = CallbackRecord(
            type=callback_type,
            data=data,
            files=files,
            status=0,
            accepted=False,
            at=interaction.age,
            request=record,
        )
        interaction.callbacks.append(callback)
        try:
            message = self.apply_callback(interaction, callback_type, data or {}, files)
        except ApiError as error:
            callback.status = error.status
            raise
        callback.accepted = True
        interaction.response = callback
        with_response = request.query.get("with_response", "").lower() in ("1", "true")
        callback.status = 200 if with_response else 204
        if not with_response:
            return no_content()
        answer: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.type,
                "response_message_loading": callback_type == DEFERRED_CHANNEL_MESSAGE,
                "response_message_ephemeral": bool(message and message.ephemeral),
            }
        }
        resource: dict[str, Any] = {"type": callback_type}
        if message is not None and callback_type in (
            CHANNEL_MESSAGE,
            DEFERRED_CHANNEL_MESSAGE,
            UPDATE_MESSAGE,
        ):
            answer["interaction"]["response_message_id"] = str(message.id)
            resource["message"] = message_payload(message)
        answer["resource"] = resource
        return json_response(answer)

    def check_callback(self, interaction: Interaction, callback_type: int) -> None:
        """Discord's refusals: a second response, a late first one, a type not allowed here."""
        rules = self.state.rules
        if interaction.response is not None and rules.single_initial_response:
            raise ApiError(
                400,
                ALREADY_ACKNOWLEDGED,
                "Interaction has already been acknowledged.",
                violation=ViolationKind.ALREADY_ACKNOWLEDGED,
                detail=f"second initial response (type {callback_type})",
            )
        if (
            interaction.response is None
            and rules.response_deadline is not None
            and interaction.age > rules.response_deadline
        ):
            raise ApiError(
                404,
                UNKNOWN_INTERACTION,
                "Unknown interaction",
                violation=ViolationKind.LATE_RESPONSE,
                detail=f"first response after {interaction.age:.2f}s "
                f"(limit {rules.response_deadline}s)",
            )
        allowed = ALLOWED_CALLBACKS.get(interaction.type, set())
        if callback_type not in allowed:
            raise ApiError(
                400,
                INVALID_FORM_BODY,
                "Invalid Form Body",
                violation=ViolationKind.INVALID_CALLBACK,
                detail=f"callback type {callback_type} not allowed for "
                f"interaction type {interaction.type}",
                errors={
                    "type": {
                        "_errors": [
                            {
                                "code": "INTERACTION_RESPONSE_TYPE_INVALID",
                                "message": "Interaction response type is invalid",
                            }
                        ]
                    }
                },
            )

    def apply_callback(
        self,
        interaction: Interaction,
        callback_type: int,
        data: dict[str, Any],
        files: list[UploadedFile],
    ) -> Message | None:
        """Check the callback, then do what it asks: post, defer, update, open a modal."""
        self.check_callback(interaction, callback_type)
        app = self.state.require_application()
        channel = interaction.channel
        if callback_type in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
            if channel is None:
                raise ApiError(
                    400, INVALID_FORM_BODY, "Invalid Form Body", detail="interaction has no channel"
                )
            flags = int(data.get("flags") or 0) & FLAG_EPHEMERAL
            if callback_type == DEFERRED_CHANNEL_MESSAGE:
                flags |= FLAG_LOADING
            message = self.messages.create(
                channel,
                app.bot,
                data if callback_type == CHANNEL_MESSAGE else {},
                files,
                size_limit=interaction.attachment_size_limit,
                flags=flags if callback_type == DEFERRED_CHANNEL_MESSAGE else None,
                validate=callback_type == CHANNEL_MESSAGE,
                interaction=interaction,
                webhook_id=app.id,
                application_id=app.id,
                message_type=20 if interaction.type == APPLICATION_COMMAND else 0,
            )
            interaction.original = message
            self.notifier.message_event("MESSAGE_CREATE", message)
            return message
        if callback_type in (DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE):
            target = interaction.source_message
            if target is None:
                raise ApiError(
                    400,
                    INVALID_FORM_BODY,
                    "Invalid Form Body",
                    violation=ViolationKind.INVALID_CALLBACK,
                    detail="update callback for an interaction without a message",
                )
            interaction.original = target
            if callback_type == UPDATE_MESSAGE:
                self.messages.edit(
                    target, data, files, size_limit=interaction.attachment_size_limit
                )
                self.notifier.message_event("MESSAGE_UPDATE", target)
            return target
        if callback_type == AUTOCOMPLETE_RESULT:
            interaction.autocomplete_choices = list(data.get("choices") or [])
        elif callback_type == MODAL:
            interaction.modal = data
        return None

    # -- followups and @original ---------------------------------------------------------------

    def webhook_interaction(self, request: web.Request) -> Interaction:
        """The interaction behind ``/webhooks/{app_id}/{token}``, with Discord's token checks."""
        record: RecordedRequest = request[RECORD]
        app = self.state.require_application()
        interaction = self.interactions.by_token.get(request.match_info["token"])
        if interaction is None or request.match_info["app_id"] != str(app.id):
            raise ApiError(
                404,
                UNKNOWN_WEBHOOK,
                "Unknown Webhook",
                violation=ViolationKind.INVALID_CALLBACK,
                detail="webhook token of no interaction",
            )
        request[INTERACTION] = interaction
        interaction.requests.append(record)
        if interaction.expired:
            raise ApiError(
                401,
                INVALID_WEBHOOK_TOKEN,
                "Invalid Webhook Token",
                violation=ViolationKind.TOKEN_EXPIRED,
                detail=f"interaction token used {interaction.age:.0f}s after creation",
            )
        if self.state.rules.require_ack_before_followup and interaction.response is None:
            raise ApiError(
                404,
                UNKNOWN_WEBHOOK,
                "Unknown Webhook",
                violation=ViolationKind.FOLLOWUP_BEFORE_ACK,
                detail="webhook route used before the interaction was acknowledged",
            )
        return interaction

    def webhook_message(self, request: web.Request, interaction: Interaction) -> Message:
        """``{message_id}``: ``@original`` or one of the interaction's followups."""
        message_id = request.match_info["message_id"]
        if message_id == "@original":
            message = interaction.original
        else:
            message = next((m for m in interaction.messages if str(m.id) == message_id), None)
        if message is None or message.deleted:
            raise ApiError(404, UNKNOWN_MESSAGE, "Unknown Message")
        return message

    async def execute(self, request: web.Request) -> web.Response:
        interaction = self.webhook_interaction(request)
        body = json_object(request)
        files: list[UploadedFile] = request[FILES]
        app = self.state.require_application()
        original = interaction.original
        if (
            original is not None
            and original.loading
            and interaction.response_type == DEFERRED_CHANNEL_MESSAGE
        ):
            # After a "thinking" defer the first followup replaces the thinking message.
            message = self.messages.edit(
                original, body, files, size_limit=interaction.attachment_size_limit
            )
            self.notifier.message_event("MESSAGE_UPDATE", message)
        else:
            channel = interaction.channel
            if channel is None:
                raise ApiError(
                    400, INVALID_FORM_BODY, "Invalid Form Body", detail="interaction has no channel"
                )
            message = self.messages.create(
                channel,
                app.bot,
                body,
                files,
                size_limit=interaction.attachment_size_limit,
                interaction=interaction,
                webhook_id=app.id,
                application_id=app.id,
                message_type=20 if interaction.type == APPLICATION_COMMAND else 0,
            )
            self.notifier.message_event("MESSAGE_CREATE", message)
        interaction.followups.append(message)
        if request.query.get("wait", "").lower() in ("1", "true"):
            return json_response(message_payload(message))
        return no_content()

    async def get_message(self, request: web.Request) -> web.Response:
        interaction = self.webhook_interaction(request)
        return json_response(message_payload(self.webhook_message(request, interaction)))

    async def edit_message(self, request: web.Request) -> web.Response:
        interaction = self.webhook_interaction(request)
        message = self.webhook_message(request, interaction)
        headers = self.edits.check(request, message.channel)
        self.messages.edit(
            message,
            json_object(request),
            request[FILES],
            size_limit=interaction.attachment_size_limit,
        )
        self.notifier.message_event("MESSAGE_UPDATE", message)
        return json_response(message_payload(message), headers=headers)

    async def delete_message(self, request: web.Request) -> web.Response:
        interaction = self.webhook_interaction(request)
        message = self.webhook_message(request, interaction)
        self.messages.delete(message)
        self.notifier.message_event("MESSAGE_DELETE", message)
        return no_content()


__all__ = ["ALLOWED_CALLBACKS", "InteractionResponses"]
