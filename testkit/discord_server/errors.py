"""Discord's JSON error responses, raised inside handlers and turned into HTTP answers.

Handlers raise :class:`ApiError` instead of building responses by hand so that every refusal has
the exact shape discord.py parses (``{"code", "message", "errors"?}``) and, when the refusal is a
rule the bot broke, a :class:`~testkit.discord_server.rules.Violation` is recorded in one place.
"""

from __future__ import annotations

from typing import Any

# JSON error codes used by the server (https://discord.com/developers/docs/topics/opcodes-and-status-codes).
GENERAL_ERROR = 0
UNKNOWN_APPLICATION = 10002
UNKNOWN_CHANNEL = 10003
UNKNOWN_GUILD = 10004
UNKNOWN_MEMBER = 10007
UNKNOWN_MESSAGE = 10008
UNKNOWN_USER = 10013
UNKNOWN_WEBHOOK = 10015
UNKNOWN_INTERACTION = 10062
UNKNOWN_APPLICATION_COMMAND = 10063
REQUEST_TOO_LARGE = 40005
ALREADY_ACKNOWLEDGED = 40060
CANNOT_EDIT_OTHERS = 50005
EMPTY_MESSAGE = 50006
MISSING_PERMISSIONS = 50013
INVALID_WEBHOOK_TOKEN = 50027
INVALID_FORM_BODY = 50035


class ApiError(Exception):
    """A refusal answered as Discord would; ``violation`` names the broken rule, if any."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        violation: str | None = None,
        detail: str | None = None,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {message} (code {code})")
        self.status = status
        self.code = code
        self.message = message
        self.violation = violation
        self.detail = detail or message
        self.errors = errors
        self.headers = headers or {}
        self._body = body

    def body(self) -> dict[str, Any]:
        """The JSON body sent to the client."""
        if self._body is not None:
            return self._body
        out: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            out["errors"] = self.errors
        return out


def form_error(field: str, message: str, code: str = "BASE_TYPE_INVALID") -> ApiError:
    """A 400 Invalid Form Body for one field, in Discord's nested ``errors`` format."""
    return ApiError(
        400,
        INVALID_FORM_BODY,
        "Invalid Form Body",
        violation="invalid_payload",
        detail=f"{field}: {message}",
        errors={field: {"_errors": [{"code": code, "message": message}]}},
    )


__all__ = [
    "ALREADY_ACKNOWLEDGED",
    "CANNOT_EDIT_OTHERS",
    "EMPTY_MESSAGE",
    "GENERAL_ERROR",
    "INVALID_FORM_BODY",
    "INVALID_WEBHOOK_TOKEN",
    "MISSING_PERMISSIONS",
    "REQUEST_TOO_LARGE",
    "UNKNOWN_APPLICATION",
    "UNKNOWN_APPLICATION_COMMAND",
    "UNKNOWN_CHANNEL",
    "UNKNOWN_GUILD",
    "UNKNOWN_INTERACTION",
    "UNKNOWN_MEMBER",
    "UNKNOWN_MESSAGE",
    "UNKNOWN_USER",
    "UNKNOWN_WEBHOOK",
    "ApiError",
    "form_error",
]
