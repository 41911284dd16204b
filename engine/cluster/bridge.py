"""The bridge: a child process that holds the Ray connection for the bot.

Frames on the child's stdin and stdout are 4-byte lengths and pickles of tuples (a pipe
between two processes of one installation, never a network socket). The child moves its own
fd 1 to stderr first, so nothing else Ray or a library prints can corrupt the frames.

    bot -> child: ("start", EngineConfig, RayConfig), then
                  ("call", rid, method, args)   ("run", job_id, request, preview_every)
                  ("cancel", job_id)            end of input: stop
    child -> bot: ("started", ReplicaInfo) or ("failed", one line), then
                  ("reply", rid, value, error)  ("job", job_id, kind, payload)
                  ("replicas", count or None)   every `WATCH_INTERVAL`
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
from .wire import ReplicaInfo

__all__ = ["WATCH_INTERVAL", "Bridge", "child_main"]

log = logging.getLogger(__name__)

#: Seconds between the child's reports of running replicas.
WATCH_INTERVAL = 2.0
_LENGTH = struct.Struct(">I")


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message, or None at the end of the stream."""
    try:
        head = await reader.readexactly(_LENGTH.size)
        return pickle.loads(await reader.readexactly(_LENGTH.unpack(head)[0]))
    except asyncio.IncompleteReadError:
        return None


def frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class Bridge:
    """The bot's side: start the child, call replicas, run jobs as queues of their events."""

    def __init__(self, config: EngineConfig, ray: RayConfig) -> None:
        self.config = config
        self.ray_config = ray
        self.replicas: int | None = None  # last count the child reported
        self._process: asyncio.subprocess.Process | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._jobs: dict[str, asyncio.Queue[tuple[str, Any]]] = {}
        self._next = 0
        self._alive = False

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
        answer = await read_frame(process.stdout)
        if answer is None or answer[0] != "started":
            await self.close()
            if answer is None:
                raise EngineError(f"the Ray bridge process exited ({process.returncode})")
            raise EngineError(answer[1])
        self._alive = True
        self._reader_task = asyncio.create_task(self._read(), name="ray-bridge-reader")
        info: ReplicaInfo = answer[1]
        return info

    async def call(self, method: str, *args: Any) -> Any:
        """A replica's method, or "count"; `EngineUnavailable` if the bridge is gone."""
        if not self._alive:
            raise EngineUnavailable("the Ray cluster cannot be reached")
        self._next += 1
        rid = self._next
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[rid] = future
        self._send(("call", rid, method, args))
        try:
            return await future
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
        process = self._process
        assert process is not None and process.stdout is not None
        while (message := await read_frame(process.stdout)) is not None:
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
                self.replicas = message[1]
        # The child is gone (the cluster's node died under it, or it was stopped).
        self._alive = False
        self.replicas = None
        for future in self._calls.values():
            if not future.done():
                future.set_exception(EngineUnavailable("the Ray cluster cannot be reached"))
        for queue in self._jobs.values():
            queue.put_nowait(("lost", "the connection to the Ray cluster was lost"))
        self._jobs.clear()


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
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                count: int | None = await client.call("count")
            except Exception:
                count = None
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
