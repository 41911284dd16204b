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
weight names and tiny tensors); so is Stability's SD3 layout (`joint_blocks.*`), which diffusers
recognises by SD3's full width, with `write_sai_names`. Z-Image's original layout (fused
`attention.qkv`, ComfyUI's prefix) converts at any width: `write_original_zimage` writes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

__all__ = [
    "seed_hub_model",
    "write_bfl_names",
    "write_original_zimage",
    "write_sai_names",
    "write_transformer_file",
]

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


def write_sai_names(path: Path) -> Path:
    """A file with the weight names and shapes by which diffusers recognises an original-layout
    (Stability's) SD3.5 Medium transformer: its first block's modulation (SD3's width, 1536,
    times six) and its position table (384 x 384 patches); enough to be recognised, not to be
    loaded."""
    from safetensors.torch import save_file

    prefix = "model.diffusion_model."
    tensors = {
        f"{prefix}joint_blocks.0.context_block.adaLN_modulation.1.bias": torch.zeros(9216),
        f"{prefix}pos_embed": torch.zeros(1, 384 * 384, 1, dtype=torch.bfloat16),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


#: Z-Image's diffusers weight names -> its original ones (diffusers'
#: `convert_z_image_transformer_checkpoint_to_diffusers`, reversed).
_ZIMAGE_ORIGINAL = {
    "all_final_layer.2-1.": "final_layer.",
    "all_x_embedder.2-1.": "x_embedder.",
    ".attention.to_out.0.": ".attention.out.",
    ".attention.norm_k.": ".attention.k_norm.",
    ".attention.norm_q.": ".attention.q_norm.",
}


def write_original_zimage(folder: Path, path: Path) -> Path:
    """The Z-Image transformer in `folder` as one `.safetensors` at `path` in the original
    layout, as ComfyUI's Z-Image files are: `model.diffusion_model.` names, each attention's
    query, key and value weights in one `qkv` tensor."""
    from safetensors.torch import load_file, save_file

    (weights,) = sorted((folder / "transformer").glob("*.safetensors"))
    tensors = load_file(weights)
    original: dict[str, torch.Tensor] = {}
    for name in list(tensors):
        if name.endswith(".attention.to_q.weight"):
            stem = name.removesuffix("to_q.weight")
            parts = [tensors.pop(f"{stem}to_{part}.weight") for part in "qkv"]
            tensors[f"{stem}qkv.weight"] = torch.cat(parts)
    for name, tensor in tensors.items():
        for new, old in _ZIMAGE_ORIGINAL.items():
            name = name.replace(new, old)
        original["model.diffusion_model." + name] = tensor.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(original, str(path), metadata={"format": "pt"})
    return path
