"""The gateway websocket: HELLO, heartbeats, IDENTIFY/READY, RESUME with replay, drops.

Every dispatch is appended to its session's history with a sequence number and a per-connection
writer task sends history in order. A RESUME points the writer at the client's last ``seq`` so
missed events are replayed exactly like Discord does, and events dispatched while the bot is
disconnected wait in the history until it resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .address import Address
from .notifier import Notifier
from .payloads import (
    bot_user_payload,
    channel_payload,
    guild_create_payload,
    member_payload,
    message_payload,
    role_payload,
    unavailable_guild_payload,
)
from .rules import ViolationKind
from .state import Message, State

# Opcodes.
DISPATCH = 0
HEARTBEAT = 1
IDENTIFY = 2
PRESENCE_UPDATE = 3
VOICE_STATE_UPDATE = 4
RESUME = 6
RECONNECT = 7
REQUEST_GUILD_MEMBERS = 8
INVALID_SESSION = 9
HELLO = 10
HEARTBEAT_ACK = 11

# Intents.
GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_PRESENCES = 1 << 8
GUILD_MESSAGES = 1 << 9
DIRECT_MESSAGES = 1 << 12
MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT

# Close codes a test may pass to drop_gateway (all resumable for discord.py except 4004+).
CLOSE_UNKNOWN_ERROR = 4000
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_SESSION_TIMED_OUT = 4009
CLOSE_INVALID_SHARD = 4010
CLOSE_DISALLOWED_INTENTS = 4014


@dataclass(eq=False)
class GatewaySession:
    """One IDENTIFY'd session: what was sent (``history[seq-1]``) and its live connection."""

    session_id: str
    shard_id: int
    shard_count: int
    intents: int
    identify: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    connection: GatewayConnection | None = None
    invalid: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def last_seq(self) -> int:
        return len(self.history)

    def append(self, event: str, data: Any) -> int:
        """Queue a dispatch; it is sent now if connected, or replayed on RESUME."""
        seq = len(self.history) + 1
        self.history.append({"op": DISPATCH, "t": event, "s": seq, "d": data})
        event_flag, self.changed = self.changed, asyncio.Event()
        event_flag.set()
        return seq

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Dispatched frames (optionally only those named ``name``)."""
        return [f for f in self.history if name is None or f["t"] == name]


@dataclass(eq=False)
class GatewayConnection:
    """One websocket; ``next_seq`` is the next history entry its writer sends."""

    ws: web.WebSocketResponse
    request: web.Request
    session: GatewaySession | None = None
    next_seq: int = 1
    writer: asyncio.Task[None] | None = None
    dropped_by_server: bool = False
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, frame: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.ws.send_str(json.dumps(frame))


class Gateway:
    """Gateway endpoint and session registry: what the world does reaches the bot from here."""

    def __init__(
        self,
        state: State,
        notifier: Notifier,
        address: Address,
        *,
        shard_count: int,
        heartbeat_interval_ms: int,
    ) -> None:
        self.state = state
        self.notifier = notifier
        self.address = address
        self.shard_count = shard_count
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.sessions: dict[str, GatewaySession] = {}
        self.current: dict[int, GatewaySession] = {}
        """The live session per shard id (the latest IDENTIFY)."""
        self.connections: list[GatewayConnection] = []
        self.received: list[dict[str, Any]] = []
        """Every frame the client sent (heartbeats included)."""
        self.heartbeat_times: list[float] = []
        """Unix time of each heartbeat the client sent (its gaps tell the client's loop lag)."""
        self.identify_count = 0
        #: The next this many IDENTIFYs are accepted but never answered with READY.
        self.withhold_ready = 0
        self.withheld_identifies = 0
        self.resume_count = 0
        self.connection_count = 0

    # -- routing -------------------------------------------------------------------------------

    def shard_for(self, guild_id: int | None) -> int:
        return 0 if guild_id is None else (guild_id >> 22) % self.shard_count

    def session_for(self, guild_id: int | None) -> GatewaySession | None:
        session = self.current.get(self.shard_for(guild_id))
        return None if session is None or session.invalid else session

    @property
    def connected(self) -> bool:
        """Some shard has a live, identified connection."""
        return any(c.session is not None and not c.ws.closed for c in self.connections)

    def dispatch(
        self, event: str, data: Any, *, guild_id: int | None = None, intent: int | None = None
    ) -> int | None:
        """Queue ``event`` for the session owning ``guild_id``; its seq, or None if filtered."""
        session = self.session_for(guild_id)
        if session is None:
            return None
        if intent is not None and not session.intents & intent:
            return None
        seq = session.append(event, data)
        self.notifier.notify()
        return seq

    def message_event(self, event: str, message: Message) -> None:
        """Send MESSAGE_CREATE/UPDATE/DELETE for a non-ephemeral message, honouring intents."""
        if message.ephemeral:
            return
        guild_id = message.guild_id
        intent = GUILD_MESSAGES if guild_id is not None else DIRECT_MESSAGES
        if event == "MESSAGE_DELETE":
            data: dict[str, Any] = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if guild_id is not None:
                data["guild_id"] = str(guild_id)
        else:
            data = message_payload(message)
            guild = message.channel.guild
            if guild is not None and message.author.id in guild.members:
                data["member"] = member_payload(guild.members[message.author.id], with_user=False)
            session = self.session_for(guild_id)
            bot = self.state.application.bot if self.state.application else None
            hidden = (
                session is not None
                and not session.intents & MESSAGE_CONTENT
                and guild_id is not None
                and bot is not None
                and message.author.id != bot.id
                and bot.id not in message.pinged_user_ids
            )
            if hidden:
                data.update(content="", embeds=[], attachments=[], components=[])
        self.dispatch(event, data, guild_id=guild_id, intent=intent)

    def world_changed(self, kind: str, obj: Any) -> None:
        """The :class:`State` listener: a guild, channel, role or member created while the bot
        may be connected gets its gateway event."""
        if kind == "guild_create":
            self.dispatch("GUILD_CREATE", guild_create_payload(obj), guild_id=obj.id, intent=GUILDS)
        elif kind == "channel_create" and obj.guild is not None:
            self.dispatch(
                "CHANNEL_CREATE", channel_payload(obj), guild_id=obj.guild.id, intent=GUILDS
            )
        elif kind == "role_create":
            self.dispatch(
                "GUILD_ROLE_CREATE",
                {"guild_id": str(obj.guild.id), "role": role_payload(obj)},
                guild_id=obj.guild.id,
                intent=GUILDS,
            )
        elif kind == "member_add":
            self.dispatch(
                "GUILD_MEMBER_ADD",
                {**member_payload(obj), "guild_id": str(obj.guild.id)},
                guild_id=obj.guild.id,
                intent=GUILD_MEMBERS,
            )
        self.notifier.notify()

    # -- websocket -----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        conn = GatewayConnection(ws=ws, request=request)
        self.connections.append(conn)
        self.connection_count += 1
        try:
            await conn.send(
                {
                    "op": HELLO,
                    "d": {"heartbeat_interval": self.heartbeat_interval_ms},
                    "s": None,
                    "t": None,
                }
            )
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_frame(conn, json.loads(msg.data))
                elif msg.type is WSMsgType.BINARY:
                    self.notifier.violate(
                        ViolationKind.UNIMPLEMENTED, "binary (ETF/compressed) gateway frame"
                    )
        finally:
            await self._detach(conn)
        return ws

    async def _detach(self, conn: GatewayConnection) -> None:
        if conn.writer is not None:
            conn.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await conn.writer
        if conn in self.connections:
            self.connections.remove(conn)
        session = conn.session
        if session is not None and session.connection is conn:
            session.connection = None
            # A client closing with 1000/1001 ends its session, as on Discord.
            if not conn.dropped_by_server and conn.ws.close_code in (1000, 1001):
                session.invalid = True
        self.notifier.notify()

    async def _on_frame(self, conn: GatewayConnection, frame: dict[str, Any]) -> None:
        self.received.append(frame)
        op = frame.get("op")
        data = frame.get("d")
        if op == HEARTBEAT:
            self.heartbeat_times.append(time.time())
            await conn.send({"op": HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == IDENTIFY:
            await self._identify(conn, data or {})
        elif op == RESUME:
            await self._resume(conn, data or {})
        elif op == REQUEST_GUILD_MEMBERS:
            self._request_members(conn, data or {})
        elif op in (PRESENCE_UPDATE, VOICE_STATE_UPDATE):
            pass  # recorded in `received`; nothing to answer
        else:
            self.notifier.violate(ViolationKind.UNIMPLEMENTED, f"gateway opcode {op}")
        self.notifier.notify()

    async def _identify(self, conn: GatewayConnection, data: dict[str, Any]) -> None:
        app = self.state.application
        if app is None or data.get("token") != app.token:
            await conn.ws.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return
        shard_id, shard_count = data.get("shard") or [0, 1]
        if shard_count != self.shard_count or not 0 <= shard_id < shard_count:
            await conn.ws.close(code=CLOSE_INVALID_SHARD, message=b"Invalid shard.")
            return
        intents = int(data.get("intents") or 0)
        if app.allowed_intents is not None and intents & PRIVILEGED_INTENTS & ~app.allowed_intents:
            await conn.ws.close(code=CLOSE_DISALLOWED_INTENTS, message=b"Disallowed intent(s).")
            return
        if self.withhold_ready > 0:  # a gateway that takes the IDENTIFY and then says nothing
            self.withhold_ready -= 1
            self.withheld_identifies += 1
            self.notifier.notify()
            return
        previous = self.current.get(shard_id)
        if previous is not None:
            previous.invalid = True
        session = GatewaySession(
            session_id=secrets.token_hex(16),
            shard_id=shard_id,
            shard_count=shard_count,
            intents=intents,
            identify=data,
        )
        self.sessions[session.session_id] = session
        self.current[shard_id] = session
        guilds = [g for g in self.state.guilds.values() if self.shard_for(g.id) == shard_id]
        session.append(
            "READY",
            {
                "v": 10,
                "user": bot_user_payload(app.bot),
                "guilds": [unavailable_guild_payload(g) for g in guilds],
                "session_id": session.session_id,
                "resume_gateway_url": self.address.gateway_url,
                "shard": [shard_id, shard_count],
                "application": {"id": str(app.id), "flags": app.flags},
                "private_channels": [],
                "relationships": [],
                "presences": [],
                "guild_join_requests": [],
                "geo_ordered_rtc_regions": [],
                "user_settings": {},
                "session_type": "normal",
                "auth": {},
                "_trace": ["discord-test-server"],
            },
        )
        if intents & GUILDS:
            for guild in guilds:
                session.append("GUILD_CREATE", guild_create_payload(guild))
        self.identify_count += 1
        self._attach(conn, session, next_seq=1)

    async def _resume(self, conn: GatewayConnection, data: dict[str, Any]) -> None:
        app = self.state.application
        session = self.sessions.get(str(data.get("session_id")))
        seq = int(data.get("seq") or 0)
        if (
            session is None
            or session.invalid
            or app is None
            or data.get("token") != app.token
            or seq > session.last_seq
        ):
            await conn.send({"op": INVALID_SESSION, "d": False, "s": None, "t": None})
            return
        old = session.connection
        if old is not None and old is not conn:
            old.dropped_by_server = True
            await old.ws.close(code=CLOSE_UNKNOWN_ERROR, message=b"Superseded by RESUME.")
        session.append("RESUMED", {"_trace": ["discord-test-server"]})
        self.resume_count += 1
        self._attach(conn, session, next_seq=seq + 1)

    def _attach(self, conn: GatewayConnection, session: GatewaySession, *, next_seq: int) -> None:
        conn.session = session
        conn.next_seq = next_seq
        session.connection = conn
        conn.writer = asyncio.create_task(
            self._write(conn), name=f"gateway-writer-{session.session_id[:6]}"
        )

    async def _write(self, conn: GatewayConnection) -> None:
        session = conn.session
        assert session is not None
        try:
            while not conn.ws.closed:
                while conn.next_seq <= session.last_seq and not conn.ws.closed:
                    await conn.send(session.history[conn.next_seq - 1])
                    conn.next_seq += 1
                await session.changed.wait()
        except (ConnectionError, RuntimeError):
            pass  # the socket went away; RESUME will replay from the client's seq

    def _request_members(self, conn: GatewayConnection, data: dict[str, Any]) -> None:
        session = conn.session
        guild = self.state.guilds.get(int(data.get("guild_id") or 0))
        if session is None or guild is None:
            return
        members = list(guild.members.values())
        if data.get("user_ids"):
            wanted = {int(u) for u in data["user_ids"]}
            members = [m for m in members if m.id in wanted]
        elif data.get("query"):
            members = [
                m for m in members if m.user.name.lower().startswith(str(data["query"]).lower())
            ]
        limit = int(data.get("limit") or 0)
        if limit:
            members = members[:limit]
        payload: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [member_payload(m) for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if data.get("nonce"):
            payload["nonce"] = data["nonce"]
        session.append("GUILD_MEMBERS_CHUNK", payload)

    # -- faults --------------------------------------------------------------------------------

    async def drop(
        self, *, code: int = CLOSE_UNKNOWN_ERROR, shard_id: int | None = None, abrupt: bool = False
    ) -> int:
        """Close live connections (sessions stay resumable); returns how many were dropped."""
        dropped = 0
        for conn in list(self.connections):
            if conn.session is None or (shard_id is not None and conn.session.shard_id != shard_id):
                continue
            conn.dropped_by_server = True
            dropped += 1
            if abrupt:
                transport = conn.request.transport
                if transport is not None:
                    transport.abort()
            else:
                await conn.ws.close(code=code, message=b"dropped by test")
        self.notifier.notify()
        return dropped

    async def send_op(self, op: int, data: Any, *, shard_id: int | None = None) -> None:
        """Send a raw non-dispatch opcode (RECONNECT, INVALID_SESSION) to live connections."""
        for conn in list(self.connections):
            if conn.session is None or (shard_id is not None and conn.session.shard_id != shard_id):
                continue
            if op == INVALID_SESSION and not data:
                conn.session.invalid = True
            conn.dropped_by_server = True
            await conn.send({"op": op, "d": data, "s": None, "t": None})

    async def close_all(self) -> None:
        for conn in list(self.connections):
            conn.dropped_by_server = True
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"server shutting down")


__all__ = [
    "CLOSE_AUTHENTICATION_FAILED",
    "CLOSE_DISALLOWED_INTENTS",
    "CLOSE_INVALID_SHARD",
    "CLOSE_SESSION_TIMED_OUT",
    "CLOSE_UNKNOWN_ERROR",
    "DIRECT_MESSAGES",
    "DISPATCH",
    "GUILDS",
    "GUILD_MEMBERS",
    "GUILD_MESSAGES",
    "GUILD_PRESENCES",
    "HEARTBEAT",
    "HEARTBEAT_ACK",
    "HELLO",
    "IDENTIFY",
    "INVALID_SESSION",
    "MESSAGE_CONTENT",
    "PRESENCE_UPDATE",
    "PRIVILEGED_INTENTS",
    "RECONNECT",
    "REQUEST_GUILD_MEMBERS",
    "RESUME",
    "VOICE_STATE_UPDATE",
    "Gateway",
    "GatewayConnection",
    "GatewaySession",
]
