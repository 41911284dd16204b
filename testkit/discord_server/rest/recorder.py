"""The REST middleware: every request is recorded, injected failures answer first, and an
:class:`~testkit.discord_server.errors.ApiError` becomes Discord-shaped JSON (its violation
recorded)."""

from __future__ import annotations

import json
import traceback

from aiohttp import web

from ..address import API_PREFIX
from ..errors import ApiError
from ..notifier import Notifier
from ..recording import Failure, InjectionQueue, RecordedRequest
from ..rules import ViolationKind
from ..state import State
from .base import BODY, FILES, INTERACTION, RECORD, Handler, json_response, parse_body


class RequestRecorder:
    """Wraps every route but the gateway's websocket."""

    def __init__(
        self,
        state: State,
        notifier: Notifier,
        requests: list[RecordedRequest],
        injections: InjectionQueue,
    ) -> None:
        self.state = state
        self.notifier = notifier
        self.requests = requests
        self.injections = injections

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/gateway":
            return await handler(request)
        path = (
            request.path[len(API_PREFIX) :] if request.path.startswith(API_PREFIX) else request.path
        )
        try:
            body, files = await parse_body(request)
        except (ValueError, UnicodeDecodeError) as exc:
            body, files = f"<unparseable body: {exc}>", []
        record = RecordedRequest(
            method=request.method,
            path=path,
            query=dict(request.query),
            json=body,
            files=files,
            at=self.state.clock.now(),
            authorization=request.headers.get("Authorization"),
        )
        self.requests.append(record)
        request[RECORD] = record
        request[BODY] = body if isinstance(body, dict | list) else None
        request[FILES] = files
        try:
            failure = self.injections.take(request.method, path, record)
            if failure is not None:
                response: web.StreamResponse = self.injected(failure, record)
            else:
                response = await handler(request)
        except ApiError as error:
            record.response = error.body()
            response = json_response(error.body(), error.status, error.headers)
            if error.violation:
                self.notifier.violate(
                    error.violation,
                    error.detail,
                    request=record,
                    interaction=request.get(INTERACTION),
                )
        except Exception as exc:  # a bug in this server: fail the test loudly, the client fast
            detail = "".join(traceback.format_exception(exc))
            self.notifier.violate(ViolationKind.SERVER_BUG, detail, request=record)
            response = json_response({"message": f"test server bug: {exc!r}", "code": 0}, 400)
        record.status = response.status
        self.injections.answering(record)
        if (
            record.response is None
            and isinstance(response, web.Response)
            and response.content_type == "application/json"
            and isinstance(response.body, bytes)
        ):
            record.response = json.loads(response.body)
        self.notifier.notify()
        return response

    def injected(self, failure: Failure, record: RecordedRequest) -> web.Response:
        """The forced answer, with the headers Discord sends on a 429 (discord.py only retries
        429s that have ``Via``)."""
        headers: dict[str, str] = {}
        if failure.status == 429:
            retry_after = failure.body()["retry_after"]
            headers = {
                "Retry-After": str(max(1, round(retry_after))),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{self.state.clock.time() + retry_after:.3f}",
                "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                "X-RateLimit-Scope": "global" if failure.is_global else "user",
                "Via": "1.1 google",
            }
            if failure.is_global:
                headers["X-RateLimit-Global"] = "true"
        record.response = failure.body()
        return json_response(failure.body(), failure.status, headers)


__all__ = ["RequestRecorder"]
