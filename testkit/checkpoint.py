"""Single-file Stable Diffusion checkpoints, as civitai and A1111 users have them, made offline.

`write_checkpoint` turns a saved diffusers SD 1.x pipeline folder (such as `builtin:tiny`'s)
into one original-format (LDM/A1111) `.safetensors`: the keys `model.diffusion_model.*` (UNet),
`first_stage_model.*` (VAE) and `cond_stage_model.transformer.*` (CLIP text encoder). It is the
inverse of diffusers' `from_single_file` conversion, after diffusers'
`scripts/convert_diffusers_to_original_stable_diffusion.py`, but reads the block counts and
`layers_per_block` from the folder's configs instead of assuming SD's four blocks, so the tiny
models convert too. Every tensor is copied unchanged (the VAE's attention projections only take
the 1x1 convolution shape LDM stores them in): the file loads back to the same weights.

`seed_hub_configs` puts a folder's configs where the hub cache keeps a repository's snapshot:
`from_single_file` reads the component configs of the default repository of the checkpoint's
family (`stable-diffusion-v1-5/stable-diffusion-v1-5` for SD 1.x) from there when the hub cannot
be reached, which is how a test loads a single file offline through the real path.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = ["SD15_CONFIG_REPO", "seed_hub_configs", "to_ldm_state_dict", "write_checkpoint"]

#: The repository whose configs diffusers uses for an SD 1.x single file (see diffusers'
#: `DIFFUSERS_DEFAULT_PIPELINE_PATHS["v1"]`).
SD15_CONFIG_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_BLOCK = re.compile(
    r"^(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\."
)
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.")


def _rename(rest: str, table: dict[str, str]) -> str:
    """`rest` with its leading module name replaced from `table` (longest name first)."""
    for old in sorted(table, key=len, reverse=True):
        if rest.startswith(old + "."):
            return table[old] + rest[len(old) :]
    return rest


def _unet_key(key: str, config: dict[str, Any]) -> str:
    per = config["layers_per_block"] + 1  # resnets of an up block; LDM numbers blocks in steps
    for old, new in _UNET_TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    if match := _MID.match(key):
        kind, n = match[1], int(match[2])
        rest = key[match.end() :]
        if kind == "resnets":
            return f"middle_block.{2 * n}.{_rename(rest, _RESNET)}"
        return f"middle_block.1.{rest}"
    if not (match := _BLOCK.match(key)):
        raise ValueError(f"no LDM name for the UNet weight {key}")
    side, block, kind, n = match[1], int(match[2]), match[3], int(match[4])
    rest = key[match.end() :]
    if side == "down":
        if kind == "downsamplers":
            return f"input_blocks.{(block + 1) * per}.0.{rest.replace('conv.', 'op.', 1)}"
        index = 1 + block * per + n
    else:
        if kind == "upsamplers":
            attention = "CrossAttn" in config["up_block_types"][block]
            return f"output_blocks.{block * per + per - 1}.{2 if attention else 1}.{rest}"
        index = block * per + n
    prefix = "input_blocks" if side == "down" else "output_blocks"
    if kind == "resnets":
        return f"{prefix}.{index}.0.{_rename(rest, _RESNET)}"
    return f"{prefix}.{index}.1.{rest}"


def _vae_key(key: str, config: dict[str, Any]) -> str:
    blocks = len(config["block_out_channels"])
    part, _, rest = key.partition(".")
    if part not in {"encoder", "decoder"}:
        return key  # quant_conv, post_quant_conv
    if rest.startswith("conv_norm_out."):
        return f"{part}.norm_out.{rest.removeprefix('conv_norm_out.')}"
    if match := _MID.match(rest):
        inner = rest[match.end() :]
        if match[1] == "resnets":
            inner = inner.replace("conv_shortcut.", "nin_shortcut.", 1)
            return f"{part}.mid.block_{int(match[2]) + 1}.{inner}"
        return f"{part}.mid.attn_1.{_rename(inner, _VAE_ATTENTION)}"
    if match := _BLOCK.match(rest):
        side, block, kind, n = match[1], int(match[2]), match[3], int(match[4])
        inner = rest[match.end() :]
        ldm_block = block if side == "down" else blocks - 1 - block  # LDM counts up from 0
        if kind == "resnets":
            inner = inner.replace("conv_shortcut.", "nin_shortcut.", 1)
            return f"{part}.{side}.{ldm_block}.block.{n}.{inner}"
        sampler = "downsample" if side == "down" else "upsample"
        return f"{part}.{side}.{ldm_block}.{sampler}.{inner}"
    return key  # conv_in, conv_out


def _load(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise ValueError(f"{folder} must hold exactly one .safetensors file")
    return load_file(files[0])


def to_ldm_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of the diffusers SD 1.x pipeline in `folder`, named as in an LDM checkpoint."""
    out: dict[str, torch.Tensor] = {}
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    for key, tensor in _load(folder / "unet").items():
        out["model.diffusion_model." + _unet_key(key, unet_config)] = tensor
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    for key, tensor in _load(folder / "vae").items():
        name = _vae_key(key, vae_config)
        if ".mid.attn_1." in name and name.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)  # LDM's 1x1 convolutions
        out["first_stage_model." + name] = tensor
    for key, tensor in _load(folder / "text_encoder").items():
        # transformers 5.6+ saves CLIPTextModel without its `text_model.` level
        name = key if key.startswith("text_model.") else "text_model." + key
        out["cond_stage_model.transformer." + name] = tensor
    return out


def write_checkpoint(folder: Path, path: Path) -> Path:
    """Save the pipeline in `folder` as one LDM-format checkpoint at `path`: `.safetensors`,
    or `.ckpt` (a torch zip file holding `{"state_dict": ...}`, as the original SD releases)."""
    state = {k: v.contiguous() for k, v in to_ldm_state_dict(folder).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".ckpt":
        torch.save({"state_dict": state, "global_step": 0}, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"format": "pt"})
    return path


def seed_hub_configs(folder: Path, hub_cache: Path, repo_id: str = SD15_CONFIG_REPO) -> Path:
    """Copy the configs and tokenizer files of the pipeline in `folder` (no weights) into
    `hub_cache` as the cached snapshot of `repo_id` (huggingface_hub's cache layout:
    `models--org--name/refs/main` naming `snapshots/<commit>/`). Returns the snapshot folder."""
    commit = "0" * 40
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for source in folder.rglob("*"):
        if source.is_file() and source.suffix in {".json", ".txt", ".model"}:
            target = snapshot / source.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
