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
recognises by SD3's full width, with `write_sai_names`; a tiny SD3 in that layout loads with
its `base` (`write_original_sd3`). Z-Image's original layout (fused
`attention.qkv`, ComfyUI's prefix) and FLUX.2's (BFL's `double_blocks.*`) convert at any width:
`write_original_zimage` and `write_bfl_flux2` write them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

__all__ = [
    "seed_hub_model",
    "write_bfl_flux2",
    "write_bfl_names",
    "write_original_sd3",
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


#: SD3's diffusers names in a block -> Stability's (diffusers'
#: `convert_sd3_transformer_checkpoint_to_diffusers`, reversed); query, key and value are fused.
_SD3_BLOCK = {
    "attn.to_out.0.": "x_block.attn.proj.",
    "attn.to_add_out.": "context_block.attn.proj.",
    "attn.norm_q.": "x_block.attn.ln_q.",
    "attn.norm_k.": "x_block.attn.ln_k.",
    "attn.norm_added_q.": "context_block.attn.ln_q.",
    "attn.norm_added_k.": "context_block.attn.ln_k.",
    "attn2.to_out.0.": "x_block.attn2.proj.",
    "attn2.norm_q.": "x_block.attn2.ln_q.",
    "attn2.norm_k.": "x_block.attn2.ln_k.",
    "norm1.linear.": "x_block.adaLN_modulation.1.",
    "norm1_context.linear.": "context_block.adaLN_modulation.1.",
    "ff.net.0.proj.": "x_block.mlp.fc1.",
    "ff.net.2.": "x_block.mlp.fc2.",
    "ff_context.net.0.proj.": "context_block.mlp.fc1.",
    "ff_context.net.2.": "context_block.mlp.fc2.",
}
_SD3_FUSED = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}
_SD3_TOP = {
    "pos_embed.pos_embed": "pos_embed",
    "context_embedder.": "context_embedder.",
    "pos_embed.proj.": "x_embedder.proj.",
    "time_text_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
    "time_text_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
    "time_text_embed.text_embedder.linear_1.": "y_embedder.mlp.0.",
    "time_text_embed.text_embedder.linear_2.": "y_embedder.mlp.2.",
    "proj_out.": "final_layer.linear.",
    "norm_out.linear.": "final_layer.adaLN_modulation.1.",
}


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """diffusers' (scale, shift) order of a final modulation <-> Stability's (shift, scale)."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first])


def write_original_sd3(folder: Path, path: Path) -> Path:
    """The SD3 transformer in `folder` as one `.safetensors` at `path` in Stability's layout
    (`model.diffusion_model.joint_blocks.*`, fused `qkv`, the final modulations' halves in
    Stability's order), as `sd3.5_medium.safetensors` and the like are published."""
    from safetensors.torch import load_file, save_file

    (weights,) = sorted((folder / "transformer").glob("*.safetensors"))
    tensors = load_file(weights)
    last = max(int(name.split(".")[1]) for name in tensors if name.startswith("transformer_"))
    original: dict[str, torch.Tensor] = {}
    for block in range(last + 1):
        at = f"transformer_blocks.{block}."
        for fused, parts in _SD3_FUSED.items():
            for kind in ("weight", "bias"):
                if f"{at}{parts[0]}.{kind}" in tensors:
                    split = [tensors.pop(f"{at}{part}.{kind}") for part in parts]
                    original[f"joint_blocks.{block}.{fused}.{kind}"] = torch.cat(split)
    for name, tensor in tensors.items():
        if name.startswith("transformer_blocks."):
            _, block, rest = name.split(".", 2)
            new = next(n for n in _SD3_BLOCK if rest.startswith(n))
            key = f"joint_blocks.{block}.{_SD3_BLOCK[new]}{rest.removeprefix(new)}"
            if int(block) == last and rest.startswith("norm1_context."):
                tensor = _swap_halves(tensor)
        else:
            new = next(n for n in _SD3_TOP if name.startswith(n))
            key = _SD3_TOP[new] + name.removeprefix(new)
            if new == "norm_out.linear.":
                tensor = _swap_halves(tensor)
        original[key] = tensor
    prefixed = {f"model.diffusion_model.{k}": v.contiguous() for k, v in original.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(prefixed, str(path), metadata={"format": "pt"})
    return path


#: FLUX.2's diffusers names -> BFL's (diffusers' `convert_flux2_transformer_checkpoint_to_
#: diffusers`, reversed): outside the blocks, then within a double and a single block.
_FLUX2_TOP = {
    "x_embedder.": "img_in.",
    "context_embedder.": "txt_in.",
    "time_guidance_embed.timestep_embedder.linear_1.": "time_in.in_layer.",
    "time_guidance_embed.timestep_embedder.linear_2.": "time_in.out_layer.",
    "time_guidance_embed.guidance_embedder.linear_1.": "guidance_in.in_layer.",
    "time_guidance_embed.guidance_embedder.linear_2.": "guidance_in.out_layer.",
    "double_stream_modulation_img.linear.": "double_stream_modulation_img.lin.",
    "double_stream_modulation_txt.linear.": "double_stream_modulation_txt.lin.",
    "single_stream_modulation.linear.": "single_stream_modulation.lin.",
    "proj_out.": "final_layer.linear.",
}
_FLUX2_DOUBLE = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
    "attn.to_out.0.": "img_attn.proj.",
    "attn.to_add_out.": "txt_attn.proj.",
    "ff.linear_in.": "img_mlp.0.",
    "ff.linear_out.": "img_mlp.2.",
    "ff_context.linear_in.": "txt_mlp.0.",
    "ff_context.linear_out.": "txt_mlp.2.",
}
_FLUX2_FUSED = {
    "img_attn.qkv.weight": ("attn.to_q.weight", "attn.to_k.weight", "attn.to_v.weight"),
    "txt_attn.qkv.weight": (
        "attn.add_q_proj.weight",
        "attn.add_k_proj.weight",
        "attn.add_v_proj.weight",
    ),
}
_FLUX2_SINGLE = {
    "attn.to_qkv_mlp_proj.": "linear1.",
    "attn.to_out.": "linear2.",
    "attn.norm_q.weight": "norm.query_norm.scale",
    "attn.norm_k.weight": "norm.key_norm.scale",
}


def write_bfl_flux2(folder: Path, path: Path) -> Path:
    """The FLUX.2 transformer in `folder` as one `.safetensors` at `path` in BFL's layout
    (`double_blocks.*`, fused `qkv`, the final modulation's halves in BFL's order), as
    `flux-2-klein-4b.safetensors` is published."""
    from safetensors.torch import load_file, save_file

    (weights,) = sorted((folder / "transformer").glob("*.safetensors"))
    tensors = load_file(weights)
    original: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        block, _, rest = name.partition(".")
        if block in ("transformer_blocks", "single_transformer_blocks"):
            index, _, rest = rest.partition(".")
            if block == "single_transformer_blocks":
                original[f"single_blocks.{index}.{_renamed(rest, _FLUX2_SINGLE)}"] = tensor
            elif not any(rest in parts for parts in _FLUX2_FUSED.values()):
                original[f"double_blocks.{index}.{_renamed(rest, _FLUX2_DOUBLE)}"] = tensor
            elif rest in (parts[0] for parts in _FLUX2_FUSED.values()):
                fused, parts = next((f, p) for f, p in _FLUX2_FUSED.items() if p[0] == rest)
                joined = torch.cat([tensors[f"{block}.{index}.{part}"] for part in parts])
                original[f"double_blocks.{index}.{fused}"] = joined
        elif name == "norm_out.linear.weight":
            original["final_layer.adaLN_modulation.1.weight"] = _swap_halves(tensor)
        else:
            original[_renamed(name, _FLUX2_TOP)] = tensor
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in original.items()}, str(path))
    return path


def _renamed(name: str, names: dict[str, str]) -> str:
    """`name` with the first of `names`' keys it starts with replaced by its value."""
    for new, old in names.items():
        if name.startswith(new):
            return old + name.removeprefix(new)
    raise KeyError(f"no original name for {name}")
