"""The Ray backend on a real local Ray cluster: two "nodes" (Ray's own multi-node test
cluster), each with two GPUs that Ray counts but that do not exist (replicas ask for one, so
they spread one per GPU as on real machines; torch then runs on the CPU).

The engine-level tests drive `RayEngine` in this process; the end-to-end tests run the real
bot with `backend = "ray"` against the Discord-compatible server. Every image is compared
with the local engine's for the same request: the replicas run the same engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

from bot.ledger import JobStatus
from engine import (
    Cancelled,
    Engine,
    EngineConfig,
    EngineError,
    EngineUnavailable,
    GenerationResult,
    ImageRequest,
    JobState,
    ModelSpec,
)
from engine.cluster import RayConfig, RayEngine
from engine.cluster.bridge import SILENT_S
from engine.cluster.serve_client import NEEDS_RAY
from testkit.jobs import JOB_TIMEOUT, button_id, job_of, read_ledger, result_of, wait_result
from testkit.process import BotProcess
from testkit.world import NewWorld, World
from tests.engine.conftest import pixels

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Ray's multi-node test cluster: a head and one worker node, 2 CPUs and 2 GPUs each."""
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 2, "num_gpus": 2}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    yield cluster
    import ray

    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


def engine_config(model_cache: Path) -> EngineConfig:
    """SD's tiny model (the default) and a FLUX-family one: every family runs on replicas;
    and the tiny captioning model and tagger for describe, the tiny face detector for the face
    fix."""
    from engine.config import DescribeConfig

    models = (
        ModelSpec(name="tiny", source="builtin:tiny"),
        ModelSpec(name="flux", source="builtin:tiny-flux-dev"),
    )
    return EngineConfig(
        models=models, default_model="tiny", max_loaded_models=2, cache_dir=model_cache,
        device="cpu",
        describe=DescribeConfig("builtin:tiny-florence2", tagger="builtin:tiny-tagger"),
        fix_detector="builtin:tiny-face-detector",
    )  # fmt: skip


def ray_config(cluster: Any, app: str) -> RayConfig:
    return RayConfig(address=cluster.address, replicas=2, num_gpus=1, num_cpus=0.5, app=app)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(cluster: Any, model_cache: Path) -> AsyncIterator[RayEngine]:
    """`RayEngine` in this process, with its own application of two replicas."""
    async with RayEngine(engine_config(model_cache), ray_config(cluster, "engine-tests")) as eng:
        yield eng


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def local(model_cache: Path) -> AsyncIterator[Engine]:
    """The in-process engine, to compare images with."""
    async with Engine(engine_config(model_cache)) as eng:
        yield eng


def assert_same_images(result: GenerationResult, expected: GenerationResult) -> None:
    """The local engine's images: a replica may batch a request with another, and a batched
    image equals the one made alone within 1/255 (as `tests/engine/test_engine.py` shows)."""
    assert len(result.images) == len(expected.images)
    for got, want in zip(result.images, expected.images, strict=True):
        assert got.seed == want.seed
        assert np.abs(pixels(got.png) - pixels(want.png)).max() <= 1


def request(prompt: str, *, seed: int, steps: int = 3, user: str = "u") -> ImageRequest:
    return ImageRequest(prompt, seed=seed, steps=steps, width=64, height=64, user=user)


async def test_replicas_give_the_local_engines_images_with_progress(
    engine: RayEngine, local: Engine
) -> None:
    assert engine.alive and engine.replicas_alive == 2 and engine.scheduling == "batch"
    assert [m.name for m in engine.models()] == ["tiny", "flux"]
    assert engine.profile.native_size == 64 and engine.profile_of("flux").family == "flux"
    flux = dataclasses.replace(request("a fox", seed=5, user="c"), model="flux", guidance=3.5)
    asks = [request("a cat", seed=3, user="a"), request("a dog", seed=9, user="b"), flux]
    jobs = [engine.submit(await engine.check(ask)) for ask in asks]
    seen: list[set[JobState]] = [set() for _ in asks]

    async def follow(i: int) -> None:
        async for progress in jobs[i].updates():
            seen[i].add(progress.state)

    await asyncio.gather(*(follow(i) for i in range(len(asks))))
    for i, ask in enumerate(asks):
        result = await jobs[i].result()
        expected = await local.generate((await local.check(ask)).request)
        assert_same_images(result, expected)  # the two may share a batch on one replica
        assert {JobState.RUNNING, JobState.DONE} <= seen[i]
    assert engine.stats.images == 3 and not engine.running and engine.queue_depth == 0


async def test_a_refused_request_is_refused_by_the_replica(engine: RayEngine) -> None:
    from engine import InvalidRequest

    with pytest.raises(InvalidRequest, match="Steps must be between 1 and 50"):
        await engine.check(request("x", seed=1, steps=500))
    resolved = (await engine.check(ImageRequest("a cat"))).request
    assert resolved.model == "tiny" and resolved.steps and resolved.width == 64


async def test_a_replica_describes_a_picture_as_the_local_engine(
    engine: RayEngine, local: Engine
) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    picture = Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    prompts = await engine.describe(picture)
    assert len(set(prompts)) == 4 and prompts == await local.describe(picture)
    tags = await engine.describe(picture, "tags")  # the tagger's, on a replica
    assert tags and tags != prompts and tags == await local.describe(picture, "tags")
    faces = await engine.detect_faces(picture)  # the face fix's detector, on a replica
    assert faces and faces == await local.detect_faces(picture)


async def test_cancel_reaches_the_replica(engine: RayEngine) -> None:
    job = engine.submit(await engine.check(request("a long one", seed=5, steps=50)))
    async for progress in job.updates():
        if progress.step >= 1:
            break
    replica = engine.replica_of(job)
    assert replica is not None
    assert job.cancel()
    with pytest.raises(Cancelled):
        await job.result()
    # The replica frees the job's place: its own queue and running set empty again.
    status = await engine_status_until(engine, lambda load: load.running == 0, replica.replica)
    assert status.queue_depth == 0


async def engine_status_until(engine: RayEngine, ok: Any, replica: str) -> Any:
    """The replica's own report, asked until `ok(report)` (Serve picks the replica: retry)."""
    for _ in range(200):
        load = await engine.replica_report()
        if load.replica == replica and ok(load):
            return load
        await asyncio.sleep(0.05)  # polling another process: nothing to await
    raise AssertionError(f"replica {replica} never reported what was expected")


async def test_a_replica_killed_mid_job_runs_it_again_once(
    engine: RayEngine, local: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "engine.cluster")
    before = engine.stats.images
    ask = request("a storm", seed=21, steps=40)
    job = engine.submit(await engine.check(ask))
    async for progress in job.updates():
        if progress.step >= 2:
            break
    replica = engine.replica_of(job)
    assert replica is not None and replica.pid != os.getpid()
    os.kill(replica.pid, signal.SIGKILL)
    result = await asyncio.wait_for(job.result(), JOB_TIMEOUT)
    expected = await local.generate((await local.check(ask)).request)
    assert [im.png for im in result.images] == [im.png for im in expected.images]  # alone
    assert engine.stats.images == before + 1  # delivered and counted once
    assert "its replica was lost" in caplog.text
    again = engine.replica_of(job)
    assert again is None or again.replica != replica.replica


async def test_an_unreachable_cluster_is_one_line(model_cache: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    engine = RayEngine(engine_config(model_cache), RayConfig(address=address))
    with pytest.raises(EngineError) as caught:
        await engine.start()
    expected = f"cannot reach the Ray cluster at [ray] address = '{address}'"
    assert str(caught.value).startswith(expected)
    assert "\n" not in str(caught.value)


async def test_without_ray_installed_start_up_says_what_to_install(
    model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bridge process finds this `ray` first, and its import fails as when not installed.
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with pytest.raises(EngineError) as caught:
        await RayEngine(engine_config(model_cache), RayConfig()).start()
    assert str(caught.value) == NEEDS_RAY and "pip install" in NEEDS_RAY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_lost_cluster_makes_the_engine_unavailable_until_it_is_back(
    model_cache: Path, local: Engine
) -> None:
    """The whole cluster goes away mid-job (its head node, with the replica): the bot's
    process lives on (Ray runs in its bridge process), new jobs are refused as unavailable,
    and the accepted job waits and is made once the cluster is back at the same address."""
    from ray.cluster_utils import Cluster

    port = free_port()
    head = {"num_cpus": 2, "num_gpus": 1, "include_dashboard": False, "gcs_server_port": port}
    first = Cluster(initialize_head=True, head_node_args=head)
    config = RayConfig(address=first.address, num_gpus=1, num_cpus=0.5, app="lost")
    engine = RayEngine(engine_config(model_cache), config)
    await engine.start()
    second = None
    try:
        ask = request("through the outage", seed=33, steps=40)
        job = engine.submit(await engine.check(ask))
        async for progress in job.updates():
            if progress.step >= 1:
                break
        first.shutdown()
        async for progress in job.updates():  # back in the queue, waiting for the cluster
            if progress.state is JobState.QUEUED:
                break
        assert not engine.alive and engine.backend()["reachable"] is False
        with pytest.raises(EngineUnavailable):
            engine.submit(await engine.check(request("during the outage", seed=1)))
        second = Cluster(initialize_head=True, head_node_args=head)  # back, same address
        result = await asyncio.wait_for(job.result(), 300)
        expected = await local.generate((await local.check(ask)).request)
        assert [im.png for im in result.images] == [im.png for im in expected.images]  # alone
        assert engine.alive and engine.stats.images == 1
    finally:
        await engine.close()
        if second is not None:
            second.shutdown()


async def test_on_a_cluster_without_gpus_replicas_ask_for_what_the_device_needs(
    model_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster with no GPU: `device = "cpu"` with `num_gpus` unset asks for none, and its
    replica starts; a replica that asks for a GPU can never be placed, and start-up stops
    within a minute with Serve's report, not after `start_timeout_s`. Serve reports replicas
    unplaced after 30 s; its own settings (read by its controller, which inherits this
    cluster's environment) cut that to 2 s here."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_SERVE_SLOW_STARTUP_WARNING_S", "2")
    monkeypatch.setenv("RAY_SERVE_SLOW_STARTUP_WARNING_PERIOD_S", "2")
    head = {"num_cpus": 2, "num_gpus": 0, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        config = RayConfig(address=cluster.address, num_cpus=0.5, app="cpu", start_timeout_s=90)
        async with RayEngine(engine_config(model_cache), config) as engine:
            assert engine.alive and engine.replicas_alive == 1
            result = await engine.generate(request("on a CPU", seed=4, steps=1))
            assert len(result.images) == 1
        wants_gpu = dataclasses.replace(config, num_gpus=1.0, app="gpu")
        started = time.monotonic()
        with pytest.raises(EngineError) as caught:
            await RayEngine(engine_config(model_cache), wants_gpu).start()
        assert time.monotonic() - started < 60
        said = str(caught.value)
        assert said.startswith('the engine\'s replicas can never be placed: each asks for {"CPU"')
        assert '"GPU": 1.0} and no node of the Ray cluster has that' in said
        assert "; Serve: Deployment 'engine' in application 'gpu'" in said  # Serve's own words
        assert "\n" not in said
    finally:
        cluster.shutdown()


# -- the bot ----------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(new_world: NewWorld, cluster: Any) -> AsyncIterator[World]:
    async with new_world(users=("alice", "bob")) as world:
        world.configure(
            engine={"backend": "ray"},
            ray={
                "address": cluster.address,
                "replicas": 2,
                "num_gpus": 1,
                "num_cpus": 0.5,
                "app": "bot-tests",
            },
            ops={"listen": "127.0.0.1:0"},
        )
        async with world.running_bot():
            yield world


async def test_the_bot_on_ray_delivers_with_progress(world: World) -> None:
    interaction = await world.server.invoke(
        "imagine",
        user=world.alice,
        channel=world.art,
        # Long enough (four images, 50 steps) that a progress edit comes before the end.
        options={"prompt": "a lighthouse", "steps": 50, "count": 4},
    )
    progress = await interaction.wait_for_original(lambda m: bool(m.custom_ids))
    result = await wait_result(interaction)
    shown = [version.content for version in progress.history] + [progress.content]
    assert any("is being made: step" in text for text in shown), shown  # steps came back
    assert result.attachments and result.content.startswith(world.alice.mention)
    job_id = int(button_id(progress, "cancel").split(":")[2])
    await world.bot.wait_for_line(rf"job {job_id}: delivered")  # recorded after the post
    async with read_ledger(world.tmp) as ledger:
        assert (await job_of(ledger, job_id)).status is JobStatus.DONE
    assert await world.bot.wait_for_line(rf"job {job_id}: on replica \w+ \(pid \d+")
    # /healthz and /metrics report the backend: two replicas alive.
    line = await world.bot.wait_for_line(r"ops endpoint on http://127\.0\.0\.1:\d+")
    ops = line[line.index("http://") :].split()[0]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{ops}/healthz") as response:
            health = await response.json()
        async with http.get(f"{ops}/metrics") as response:
            metrics = await response.text()
    assert health["ok"] and health["backend"]["kind"] == "ray", health
    assert health["backend"]["replicas_alive"] == 2
    assert "imagine_replicas_alive 2.0" in metrics and "imagine_replica_jobs{replica=" in metrics
    assert "imagine_replica_queue{replica=" in metrics
    assert set(health["backend"]["replica_queues"]) <= set(health["backend"]["replica_jobs"])


async def test_the_bot_on_ray_cancels(world: World) -> None:
    job_id, progress = await world.imagine(world.bob, "a slow one", steps=50)
    await world.bot.wait_for_line(rf"job {job_id}: on replica")
    click = await world.server.click(progress, button_id(progress, "cancel"), user=world.bob)
    await click.wait_for_response()
    assert progress.interaction is not None
    await progress.interaction.wait_for_original(lambda m: "cancelled" in m.content, timeout=60)
    async with read_ledger(world.tmp) as ledger:
        assert (await job_of(ledger, job_id)).status is JobStatus.CANCELLED


async def test_a_silent_bridge_is_restarted_and_what_waited_on_it_refused(world: World) -> None:
    """The bridge process stops answering (SIGSTOP: alive but silent, as when it hangs in a
    Ray call). A /imagine that reaches it is refused "cannot be reached" once the bridge is
    taken as dead (`SILENT_S`), and charged nothing; /healthz says 503 until a new bridge has
    joined the running application; then it is 200 again."""
    bot, ops = world.bot, await ops_url(world)
    pid = bridge_pids(bot)[-1]
    async with read_ledger(world.tmp) as ledger:
        before = await ledger.user_status(world.guild.id, world.bob.id)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        interaction = await world.server.invoke(
            "imagine", user=world.bob, channel=world.art, options={"prompt": "a hang", "steps": 2}
        )
        told = await interaction.wait_for_original(
            lambda m: "cannot be reached" in m.content, timeout=SILENT_S + 30
        )
        assert time.monotonic() - started < SILENT_S + 15  # the bridge's deadline, not never
        assert await health(ops) == 503  # before the new bridge is up (seconds later)
        await bot.wait_for_line(rf"\(pid {pid}\) sent nothing for \d+ s: it is taken as dead")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # killed already, unless the test failed first
    assert not told.custom_ids
    await restarted(world, pid)
    async with read_ledger(world.tmp) as ledger:
        after = await ledger.user_status(world.guild.id, world.bob.id)
    assert after.used == before.used  # charged nothing


async def test_a_garbled_bridge_frame_restarts_the_bridge(world: World) -> None:
    """A frame from the bridge that does not unpickle (written here into the real pipe the
    bridge process writes its frames to) ends that bridge at once, not the bot's reading of
    it in silence; /healthz is 503 until a new bridge answers, then the bot works again."""
    bot, ops = world.bot, await ops_url(world)
    pid = bridge_pids(bot)[-1]
    write_into_frames_pipe(pid, struct.pack(">I", 8) + b"garbage!")
    await bot.wait_for_line(rf"\(pid {pid}\) sent a frame that does not unpickle")
    assert await health(ops) == 503
    await restarted(world, pid)
    job_id, progress = await world.imagine(world.alice, "after the garbage")
    assert progress.interaction is not None
    assert (await wait_result(progress.interaction)).attachments
    await world.bot.wait_for_line(rf"job {job_id}: delivered")


def bridge_pids(bot: BotProcess) -> list[int]:
    """The bot's bridge processes so far, oldest first (each logs its pid once connected)."""
    found = (re.search(r"Ray bridge process \(pid (\d+)\) connected", line) for line in bot.lines)
    return [int(m[1]) for m in found if m]


async def restarted(world: World, pid: int) -> int:
    """Once a new bridge has replaced dead `pid` and the engine answers again, having joined
    the running application (not redeployed it), with /healthz 200: the new bridge's pid."""

    def since_death() -> list[str]:
        lines = world.bot.lines
        dead = [i for i, line in enumerate(lines) if f"(pid {pid}) " in line and "dead" in line]
        return lines[dead[-1] :] if dead else []

    await world.server.wait_until(
        lambda: any("the Ray cluster answers again" in line for line in since_death()),
        timeout=120,
        what="a new Ray bridge process",
        seen=lambda: world.bot.output[-3000:],
    )
    assert any("joining the running Ray Serve application" in line for line in since_death())
    assert await health(await ops_url(world)) == 200
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the silent one was killed (and reaped)
    new = bridge_pids(world.bot)[-1]
    assert new != pid
    return new


async def ops_url(world: World) -> str:
    line = await world.bot.wait_for_line(r"ops endpoint on http://127\.0\.0\.1:\d+")
    return line[line.index("http://") :].split()[0]


async def health(ops: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{ops}/healthz") as response:
        return response.status


def write_into_frames_pipe(child: int, data: bytes) -> None:
    """Write `data` into the pipe bridge process `child` sends its frames on: the one pipe it
    holds open for writing that its parent (the bot) holds open for reading."""

    def pipes(pid: int, mode: int) -> dict[str, int]:
        out: dict[str, int] = {}
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                flags = int(info.split("flags:")[1].split()[0], 8)
                if target.startswith("pipe:") and flags & os.O_ACCMODE == mode:
                    out[target] = int(fd)
        return out

    parent = int(Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[1])
    writes = pipes(child, os.O_WRONLY)
    [pipe] = set(writes) & set(pipes(parent, os.O_RDONLY))
    fd = os.open(f"/proc/{child}/fd/{writes[pipe]}", os.O_WRONLY)
    try:
        assert os.write(fd, data) == len(data)  # under PIPE_BUF: never split between frames
    finally:
        os.close(fd)


async def test_the_bot_survives_a_replica_killed_mid_job(world: World) -> None:
    job_id, progress = await world.imagine(world.alice, "a storm at sea", steps=40)
    line = await world.bot.wait_for_line(rf"job {job_id}: on replica \w+ \(pid \d+", within=60)
    pid = int(line.split("(pid ")[1].split()[0])
    assert progress.interaction is not None
    await progress.interaction.wait_for_original(lambda m: "step" in m.content, timeout=60)
    os.kill(pid, signal.SIGKILL)
    result = await wait_result(progress.interaction)
    assert result_of(progress.interaction) is result
    assert len(world.results_for(job_id)) == 1  # posted once
    await world.bot.wait_for_line(rf"job {job_id}: its replica was lost")
    await world.bot.wait_for_line(rf"job {job_id}: delivered")  # recorded after the post
    async with read_ledger(world.tmp) as ledger:
        job = await job_of(ledger, job_id)
        assert job.status is JobStatus.DONE
        status = await ledger.user_status(world.guild.id, world.alice.id)
        jobs = await ledger.jobs_for_user(world.guild.id, world.alice.id)
    # Counted once: what alice used is exactly her delivered jobs' images.
    done = [j.request.image_count for j in jobs if j.status is JobStatus.DONE]
    assert status.used == sum(done) > 0
