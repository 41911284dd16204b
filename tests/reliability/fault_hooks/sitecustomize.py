"""Test-only fault injection for `tests/reliability/`, never part of the bot.

`tests/reliability/test_faults.py` puts this folder first on the `PYTHONPATH` of the
`imagine-bot run` subprocess it starts, so Python imports this file as `sitecustomize` at
start-up. It wraps `Engine.start` to add forward pre-hooks to the real pipeline on the engine's
worker thread (`Engine.run_in_worker`), as `tests/engine/test_failures.py` does in-process.

There is no GPU here, so out of memory is simulated the way a small GPU would behave:

- a UNet call on more than `MAX_SAMPLES` samples raises `torch.cuda.OutOfMemoryError` (a batch
  too big: the engine must split it and retry the halves);
- the prompt `POISON` always raises it in the text encoder (a request that never fits: it must
  fail alone);
- while the file `HOLD` exists in the bot's working directory, the UNet waits: a test parks a
  job mid-run, deterministically, to inject a fault while it runs.
- the image drawn from seed `NAN_SEED` starts from NaN noise (`nan_noise`), as an overflow
  would leave its latents: it must never be posted nor charged, and the other images of its
  job and batch are delivered.

The safety checker's verdict, the same way (`builtin:tiny` has no checker, and the tiny one
of `builtin:tiny-flagging` flags every image): the image of seed `FLAGGED_SEED` is flagged,
so a job can have some of its images withheld and the rest posted.

Faults around the ledger, the same way (files in the bot's working directory):

- while `HOLD_POST` exists, a delivery waits between recording its start and posting: a test
  fills the channel with messages in between;
- while `KILL_BEFORE_DONE` exists, the bot SIGKILLs itself the moment a posted result is to be
  recorded as done: the narrowest window between posting and recording;
- while `FAIL_DONE` exists, recording a posted result fails as on a full disk;
- if `IMMUTABLE_BEFORE_DONE` exists, the hook removes it and makes the real database file
  immutable (`chattr +i`) the moment a posted result is to be recorded: the fault is real,
  the hook only times it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import engine.service

POISON = "a poisoned prompt"
MAX_SAMPLES = 2  # one image with classifier-free guidance
HOLD = "hold-unet"
HOLD_POST = "hold-post"
KILL_BEFORE_DONE = "kill-before-done"
FAIL_DONE = "fail-done"
IMMUTABLE_BEFORE_DONE = "immutable-before-done"
DATABASE_FILE = "imagine.db"
NAN_SEED = 4_000_000_013
#: Where the initial noise of an image is drawn (diffusers' `randn_tensor`, as each module
#: imported it): the stock pipelines (batch scheduling) and the engine's stepper.
NOISE_MODULES = (
    "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
    "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img",
    "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl",
    "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img",
)
FLAGGED_SEED = 4242

log = logging.getLogger("fault_hooks")


def nan_noise(randn: Callable[..., Any]) -> Callable[..., Any]:
    """`randn_tensor` giving NaN for the row drawn from a generator seeded `NAN_SEED`."""

    def randn_tensor(shape: Any, generator: Any = None, *args: Any, **kwargs: Any) -> Any:
        noise = randn(shape, generator, *args, **kwargs)
        generators = generator if isinstance(generator, list) else [generator]
        for row, drawn in enumerate(generators):
            if drawn is not None and drawn.initial_seed() == NAN_SEED:
                log.warning("fault hook: NaN noise for seed %d", NAN_SEED)
                noise[row] = float("nan")
        return noise

    return randn_tensor


def install_nan_noise() -> None:
    """Put `nan_noise` in every module of `NOISE_MODULES`."""
    for name in NOISE_MODULES:
        module = importlib.import_module(name)
        module.randn_tensor = nan_noise(module.randn_tensor)  # type: ignore[attr-defined]


def install(pipe: Any) -> None:
    """Register the hooks (runs on the worker thread that owns `pipe`)."""
    import torch

    tokens = pipe.tokenizer(
        POISON,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids[0]
    hold = Path.cwd() / HOLD

    def text_encoder(module: Any, args: tuple[Any, ...]) -> None:
        if any(torch.equal(row, tokens) for row in args[0]):
            log.warning("fault hook: simulated out of memory for the poisoned prompt")
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    def unet(module: Any, args: tuple[Any, ...]) -> None:
        while hold.exists():  # another process's gate: a file is all both sides can see
            time.sleep(0.02)
        samples = args[0].shape[0]
        if samples > MAX_SAMPLES:
            log.warning("fault hook: simulated out of memory for %d UNet samples", samples)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    pipe.text_encoder.register_forward_pre_hook(text_encoder)
    pipe.unet.register_forward_pre_hook(unet)
    install_nan_noise()


def patch_engine_start() -> None:
    """Every `Engine.start` installs the hooks once the model is loaded."""
    start = engine.service.Engine.start

    async def start_with_hooks(self: engine.service.Engine) -> None:
        await start(self)
        await self.run_in_worker(install)
        flag_one_seed()
        log.warning("fault hook: installed (test-only simulation of GPU faults)")

    engine.service.Engine.start = start_with_hooks  # type: ignore[method-assign]


def flag_one_seed() -> None:
    """The image of seed `FLAGGED_SEED` comes out flagged, as the safety checker says it
    (both ways of running requests package their images through `package_images`)."""
    import engine.runner
    import engine.stepper
    import engine.torch_ops

    package_images = engine.torch_ops.package_images

    def flagging(model: Any, request: Any, images: Any, flags: Any) -> Any:
        flags = [f or seed == FLAGGED_SEED for seed, f in zip(request.seeds, flags, strict=True)]
        return package_images(model, request, images, flags)

    engine.runner.package_images = flagging  # type: ignore[attr-defined]
    engine.stepper.package_images = flagging  # type: ignore[attr-defined]


def patch_ledger() -> None:
    """`Ledger.mark_done` with a message (a result was just posted) honours the ledger gates;
    `Ledger.start_delivery` honours `HOLD_POST`."""
    import bot.ledger.store as store
    from bot.ledger import LedgerError

    mark_done = store.Ledger.mark_done

    async def mark_done_with_faults(
        self: store.Ledger, job_id: int, message_id: int | None = None
    ) -> bool:
        if message_id is not None:
            if (Path.cwd() / KILL_BEFORE_DONE).exists():
                log.warning("fault hook: SIGKILL after posting job %d", job_id)
                os.kill(os.getpid(), signal.SIGKILL)
            if (Path.cwd() / FAIL_DONE).exists():
                raise LedgerError("database or disk is full (simulated)")
            gate = Path.cwd() / IMMUTABLE_BEFORE_DONE
            if gate.exists():
                gate.unlink()
                log.warning("fault hook: chattr +i %s after posting job %d", DATABASE_FILE, job_id)
                # Blocking on purpose: the file must be immutable before the write starts.
                subprocess.run(["chattr", "+i", DATABASE_FILE], check=True)  # noqa: ASYNC221
        return await mark_done(self, job_id, message_id)

    store.Ledger.mark_done = mark_done_with_faults  # type: ignore[method-assign]

    start_delivery = store.Ledger.start_delivery

    async def start_delivery_held(self: store.Ledger, job_id: int, **options: Any) -> bool:
        started = await start_delivery(self, job_id, **options)
        gate = Path.cwd() / HOLD_POST
        if gate.exists():
            log.warning("fault hook: holding the post of job %d", job_id)
            while gate.exists():  # noqa: ASYNC110 (another process's gate: a file)
                await asyncio.sleep(0.02)
        return started

    store.Ledger.start_delivery = start_delivery_held  # type: ignore[method-assign]


if __name__ == "sitecustomize":  # only in the bot subprocess; the tests import the names
    patch_engine_start()
    patch_ledger()
