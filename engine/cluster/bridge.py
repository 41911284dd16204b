"""The bridge: a child process that holds the Ray connection for the bot.

Frames on the child's stdin and stdout are 4-byte lengths and pickles of tuples (a pipe
between two processes of one installation, never a network socket). The child moves its own
fd 1 to stderr first, so nothing else Ray or a library prints can corrupt the frames. What
the child sends comes from the cluster's replicas (results, errors): the bot unpickles it,
so the Ray nodes are trusted as the bot's own code is.

A child that says nothing for `SILENT_S` (it reports every `WATCH_INTERVAL`, busy or not),
or sends a frame that does not unpickle, is taken as dead: the bot kills it, its calls and
jobs end as "cannot be reached", and `RayEngine`'s watchdog starts a new one. Every call has
a deadline too.

    bot -> child: ("start", EngineConfig, RayConfig), then
                  ("call", rid, method, args)   ("run", job_id, request, preview_every)
                  ("cancel", job_id)            end of input: stop
    child -> bot: ("started", ReplicaInfo) or ("failed", one line), then
                  ("reply", rid, value, error)  ("job", job_id, kind, payload)
                  ("replicas", count or None)   every `WATCH_INTERVAL` (None: no fresh
                                                count), whatever else it is doing
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import struct
import sys
from typing import Any

from ..client import Checked
from ..config import EngineConfig
from ..errors import EngineError, EngineUnavailable
from ..sources import first_line
from .config import RayConfig
from .serve_client import CALL_TIMEOUT
from .wire import ReplicaInfo

__all__ = ["CALL_DEADLINE", "SILENT_S", "WATCH_INTERVAL", "Bridge", "child_main"]

log = logging.getLogger(__name__)

#: Seconds between the child's reports of running replicas.
WATCH_INTERVAL = 2.0
#: Seconds without a frame from the child before it is taken as dead (five reports missed).
SILENT_S = 5 * WATCH_INTERVAL
#: Seconds a call may take: the child gives up on a replica after `CALL_TIMEOUT` itself.
CALL_DEADLINE = CALL_TIMEOUT + 10.0
#: Seconds the child may take to connect (Ray's own retries), on top of `start_timeout_s`.
CONNECT_S = 120.0
_LENGTH = struct.Struct(">I")


class Garbled(Exception):
    """A frame that does not unpickle into a message."""


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message (a tuple), or None at the end of the stream; `Garbled` if it is not
    one."""
    try:
        head = await reader.readexactly(_LENGTH.size)
        body = await reader.readexactly(_LENGTH.unpack(head)[0])
    except asyncio.IncompleteReadError:
        return None
    try:
        message = pickle.loads(body)
    except Exception as exc:  # anything can come of bytes that are not a pickle
        raise Garbled(f"{type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(message, tuple) or not message:
        raise Garbled(f"not a message: {type(message).__name__}")
    return message


def frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class Bridge:
    """The bot's side: start the child, call replicas, run jobs as queues of their events."""

    def __init__(self, config: EngineConfig, ray: RayConfig) -> None:
        self.config = config
        self.ray_config = ray
        self.replicas: int | None = None  # last count the child reported
        self.unanswered = 0  # its reports in a row without a count (Serve did not answer)
        self.death: str | None = None  # why the child was taken as dead, once it was
        self._process: asyncio.subprocess.Process | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._jobs: dict[str, asyncio.Queue[tuple[str, Any]]] = {}
        self._next = 0
        self._alive = False
        self._closing = False  # asked to stop: it may take its time (a private cluster's end)

    @property
    def alive(self) -> bool:
        return self._alive

    async def start(self) -> ReplicaInfo:
        """Start the child and let it connect and deploy; `EngineError` with its one line."""
        self._process = process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine.cluster.child",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        self._send(("start", self.config, self.ray_config))
        deadline = self.ray_config.start_timeout_s + CONNECT_S
        try:
            answer = await asyncio.wait_for(read_frame(process.stdout), deadline)
        except (TimeoutError, Garbled) as exc:
            await self.kill()
            why = (
                f"sent a frame that does not unpickle ({exc})"
                if isinstance(exc, Garbled)
                else f"said nothing for {deadline:.0f} s"
            )
            raise EngineError(f"the Ray bridge process {why}") from None
        if answer is None or answer[0] != "started":
            await self.close()
            if answer is None:
                raise EngineError(f"the Ray bridge process exited ({process.returncode})")
            raise EngineError(answer[1])
        self._alive = True
        self._reader_task = asyncio.create_task(self._read(), name="ray-bridge-reader")
        log.info("Ray bridge process (pid %d) connected", process.pid)
        info: ReplicaInfo = answer[1]
        return info

    async def call(self, method: str, *args: Any, within: float = CALL_DEADLINE) -> Any:
        """A replica's method, or "count"; `EngineUnavailable` if the bridge is gone or the
        answer does not come `within` seconds."""
        if not self._alive:
            raise EngineUnavailable("the Ray cluster cannot be reached")
        self._next += 1
        rid = self._next
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[rid] = future
        self._send(("call", rid, method, args))
        try:
            return await asyncio.wait_for(future, within)
        except TimeoutError:
            raise EngineUnavailable(f"no answer from the Ray cluster in {within:.0f} s") from None
        finally:
            self._calls.pop(rid, None)

    def run(
        self, job_id: str, checked: Checked, preview_every: float
    ) -> asyncio.Queue[tuple[str, Any]]:
        """Start a job's stream; its events come on the queue: ("event", ReplicaEvent), then
        one of ("ended" | "cancelled" | "lost" | "failed", text)."""
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._jobs[job_id] = queue
        if self._alive:
            self._send(("run", job_id, checked, preview_every))
        else:
            queue.put_nowait(("lost", "the Ray cluster cannot be reached"))
        return queue

    def cancel(self, job_id: str) -> None:
        if self._alive and job_id in self._jobs:
            self._send(("cancel", job_id))

    async def kill(self) -> None:
        """End the child at once (its cluster is gone: it may hang in Ray's calls)."""
        self._alive = False
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        if self._reader_task is not None:
            await self._reader_task

    async def close(self) -> None:
        """End the child (it cancels its calls and, for a private cluster, shuts it down)."""
        process = self._process
        self._alive = False
        self._closing = True
        if process is None:
            return
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._reader_task is not None:
            await self._reader_task

    def _send(self, message: tuple[Any, ...]) -> None:
        process = self._process
        assert process is not None and process.stdin is not None
        if not process.stdin.is_closing():
            process.stdin.write(frame(message))

    async def _read(self) -> None:
        """Hand the child's frames out until it ends, or is taken as dead: silent for
        `SILENT_S`, or garbled. Either way its calls and jobs end as unreachable."""
        process = self._process
        assert process is not None and process.stdout is not None
        try:
            while True:
                try:
                    message = await asyncio.wait_for(read_frame(process.stdout), SILENT_S)
                except TimeoutError:
                    if self._closing:  # it stops talking as it ends: `close` bounds that
                        continue
                    await self._dead(process, f"sent nothing for {SILENT_S:.0f} s")
                    break
                except Garbled as exc:
                    await self._dead(process, f"sent a frame that does not unpickle ({exc})")
                    break
                if message is None:  # it exited (its cluster's node died, or it was stopped)
                    break
                try:
                    self._take(message)
                except Exception as exc:  # a frame of the wrong shape: garbled too
                    await self._dead(process, f"sent a malformed message ({first_line(exc)})")
                    break
        finally:
            self._alive = False
            self.replicas = None
            for future in self._calls.values():
                if not future.done():
                    future.set_exception(EngineUnavailable("the Ray cluster cannot be reached"))
            for queue in self._jobs.values():
                queue.put_nowait(("lost", "the connection to the Ray cluster was lost"))
            self._jobs.clear()

    def _take(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "reply":
            _, rid, value, error = message
            future = self._calls.get(rid)
            if future is not None and not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(value)
        elif kind == "job":
            _, job_id, what, payload = message
            queue = self._jobs.get(job_id)
            if queue is not None:
                queue.put_nowait((what, payload))
                if what != "event":
                    self._jobs.pop(job_id, None)
        elif kind == "replicas":
            _, count = message
            if count is None:
                self.unanswered += 1
            else:
                self.replicas, self.unanswered = int(count), 0
        else:
            raise ValueError(f"unknown message {kind!r}")

    async def _dead(self, process: asyncio.subprocess.Process, why: str) -> None:
        """Take the child as dead: a bot that waits on it would hang while it looks healthy."""
        self._alive = False
        self.death = f"the Ray bridge process (pid {process.pid}) {why}"
        log.error("%s: it is taken as dead and restarted", self.death)
        if process.returncode is None:
            process.kill()
            await process.wait()


# -- the child ------------------------------------------------------------------------------


async def _child() -> None:
    from .serve_client import ServeClient

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # whatever else is printed goes to stderr, never between frames

    def send(message: tuple[Any, ...]) -> None:
        out.write(frame(message))

    start = await read_frame(reader)
    if start is None:
        return
    _, config, ray_config = start
    client = ServeClient(config, ray_config)
    try:
        info = await client.start()
    except EngineError as exc:
        send(("failed", str(exc)))
        return
    except Exception as exc:
        send(("failed", f"the Ray backend could not start: {first_line(exc)}"))
        return
    send(("started", info))
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Any) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def answer(rid: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            send(("reply", rid, await client.call(method, *args), None))
        except EngineError as exc:
            send(("reply", rid, None, exc))
        except Exception as exc:
            send(("reply", rid, None, EngineUnavailable(first_line(exc))))

    async def watch() -> None:
        """Report every `WATCH_INTERVAL`, the bot's sign of life from here: the count when a
        fresh one came back, else None (one look at Serve at a time, however slow)."""
        look = asyncio.create_task(client.call("count"))
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            count: int | None = None
            if look.done():
                if not look.cancelled() and look.exception() is None:
                    count = look.result()
                look = asyncio.create_task(client.call("count"))
            send(("replicas", count))

    spawn(watch())
    try:
        while (message := await read_frame(reader)) is not None:
            kind = message[0]
            if kind == "call":
                spawn(answer(*message[1:]))
            elif kind == "run":
                _, job_id, checked, every = message
                spawn(
                    client.run(
                        job_id,
                        checked,
                        every,
                        lambda what, payload, j=job_id: send(("job", j, what, payload)),
                    )
                )
            elif kind == "cancel":
                client.cancel(message[1])
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(client.shutdown)


def child_main() -> None:
    """The child's entry point (`python -m engine.cluster.child`)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s ray-bridge %(name)s: %(message)s"
    )
    asyncio.run(_child())
