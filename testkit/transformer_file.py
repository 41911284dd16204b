"""Diffusion-transformer single files (FLUX.1, Chroma...) as users download them, made offline.

Such a file holds the transformer alone; the engine takes the other components (text encoders,
VAE, tokenizers, scheduler) from the family's reference repository on the hub. Offline,
`seed_hub_model` puts a tiny pipeline's folder where the hub cache keeps that repository
(less the transformer's weights, which the file brings), and `write_transformer_file` saves
the tiny transformer as one `.safetensors`.

The file is in diffusers' key layout (a transformer folder's weights as one file, as some
fine-tunes are shared), which `from_single_file` reads without converting. The original BFL
layout (`double_blocks.*`, what Black Forest Labs and most Flux fine-tunes publish) cannot be
made from a tiny model: diffusers' conversion of that layout assumes FLUX.1's full width
(3072), so only its recognition is tested, with `write_bfl_names` (a file of the layout's
weight names and tiny tensors).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

__all__ = ["seed_hub_model", "write_bfl_names", "write_transformer_file"]

_COMMIT = "0" * 40


def seed_hub_model(
    folder: Path, hub_cache: Path, repo_id: str, without: str = "transformer"
) -> Path:
    """Copy the diffusers pipeline in `folder` into `hub_cache` as the cached snapshot of
    `repo_id` (huggingface_hub's layout), less the weights of its `without` component (its
    config stays). Returns the snapshot folder."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / _COMMIT
    for source in folder.rglob("*"):
        part = source.relative_to(folder)
        if not source.is_file() or (part.parts[0] == without and source.suffix == ".safetensors"):
            continue
        target = snapshot / part
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(_COMMIT)
    return snapshot


def write_transformer_file(folder: Path, path: Path, component: str = "transformer") -> Path:
    """The weights of the pipeline's `component` in `folder` as one `.safetensors` at `path`
    (diffusers' key layout), with the metadata diffusers writes."""
    from safetensors.torch import load_file, save_file

    (weights,) = sorted((folder / component).glob("*.safetensors"))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(weights), str(path), metadata={"format": "pt"})
    return path


def write_bfl_names(path: Path, *, guidance: bool) -> Path:
    """A file with the weight names by which diffusers recognises an original-layout FLUX.1
    transformer (`dev` has `guidance_in`), holding tiny tensors: enough to be recognised, not
    to be loaded."""
    from safetensors.torch import save_file

    names = [
        "img_in.weight",
        "img_in.bias",
        "double_blocks.0.img_attn.norm.key_norm.scale",
        "single_blocks.0.linear1.weight",
        "final_layer.linear.weight",
    ]
    if guidance:
        names += ["guidance_in.in_layer.weight", "guidance_in.in_layer.bias"]
    tensors = {name: torch.zeros(4, 64) for name in names}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path
