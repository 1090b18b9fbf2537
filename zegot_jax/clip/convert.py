"""Checkpoint names: Hugging Face -> OpenAI, OpenAI <-> our NNX paths, and the variant from shapes.

Everything is converted to OpenAI's layout first
(`visual.transformer.resblocks.3.attn.in_proj_weight`, ...), which our module tree mirrors; only
leaf names differ (`weight` -> `kernel` transposed for linear and conv layers, `scale` for
LayerNorm, `embedding` for the token table).
"""

from __future__ import annotations

import math
import re

import numpy as np

from zegot_jax.clip.variants import CLIPSpec

# Keys some checkpoints carry that hold no parameters (OpenAI's TorchScript ints, HF buffers).
IGNORED_KEYS = re.compile(r"^(input_resolution|context_length|vocab_size)$|position_ids$")

# The one HF -> OpenAI table. Keys ending in '.' are prefixes; `{i}` marks a block index.
# HF stores linear weights as (out, in) like OpenAI, except the two projections (transposed here).
HF_TO_OPENAI = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.": "visual.ln_pre.",
    "vision_model.post_layernorm.": "visual.ln_post.",
    "visual_projection.weight": "visual.proj",  # transposed: (D, W) -> (W, D)
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.": "ln_final.",
    "text_projection.weight": "text_projection",  # transposed
    "logit_scale": "logit_scale",
    "vision_model.encoder.layers.{i}.": "visual.transformer.resblocks.{i}.",
    "text_model.encoder.layers.{i}.": "transformer.resblocks.{i}.",
    # inside a block
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
    "self_attn.out_proj.": "attn.out_proj.",
    "self_attn.{q,k,v}_proj.": "attn.in_proj_",  # q, k, v concatenated along the output axis
}
_HF_TRANSPOSED = ("visual_projection.weight", "text_projection.weight")
_HF_BLOCK = re.compile(r"^(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)$")
_HF_QKV = re.compile(r"^self_attn\.([qkv])_proj\.(weight|bias)$")


def is_hf_layout(state: dict[str, np.ndarray]) -> bool:
    """True for Hugging Face `CLIPModel` names (`vision_model.*`, `text_model.*`)."""
    return any(k.startswith(("vision_model.", "text_model.")) for k in state)


def hf_to_openai(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames a Hugging Face CLIP state dict to OpenAI's layout (unknown names pass unchanged)."""
    out, qkv = {}, {}
    for name, value in state.items():
        block = _HF_BLOCK.match(name)
        if block is None:
            new = _rename(name, HF_TO_OPENAI)
            out[new] = value.T if name in _HF_TRANSPOSED else value
            continue
        tower, index, rest = block.groups()
        prefix = HF_TO_OPENAI[f"{tower}.encoder.layers.{{i}}."].format(i=index)
        fused = _HF_QKV.match(rest)
        if fused:
            qkv.setdefault((prefix, fused.group(2)), {})[fused.group(1)] = value
        else:
            out[prefix + _rename(rest, HF_TO_OPENAI)] = value
    for (prefix, kind), parts in qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise ValueError(
                f"Checkpoint has only the {sorted(parts)} projections of "
                f"{prefix}self_attn; q, k and v are all needed."
            )
        out[f"{prefix}attn.in_proj_{kind}"] = np.concatenate([parts[c] for c in "qkv"], axis=0)
    return out


def _rename(name: str, table: dict[str, str]) -> str:
    if name in table:
        return table[name]
    for old, new in table.items():
        if old.endswith(".") and "{" not in old and name.startswith(old):
            return new + name[len(old) :]
    return name


def _count_blocks(state: dict[str, np.ndarray], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def infer_spec(
    state: dict[str, np.ndarray],
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    activation: str = "quick_gelu",
) -> CLIPSpec:
    """Reads the variant from the shapes of an OpenAI-layout state dict.

    Widths, depths, patch, MLP widths (per tower) come from the shapes. Heads default to
    width // 64 (OpenAI's models; not all of open_clip's); pass them (from a config or our
    safetensors metadata) for other models.

    Raises:
        ValueError: if the state dict is not a CLIP ViT (names the missing entries).
    """
    required = (
        "visual.conv1.weight",
        "visual.positional_embedding",
        "visual.proj",
        "token_embedding.weight",
        "positional_embedding",
        "text_projection",
    )
    missing = [k for k in required if k not in state]
    if missing:
        sample = sorted(state)[:8]
        raise ValueError(
            f"Not a CLIP ViT checkpoint in OpenAI, open_clip or Hugging Face layout: missing "
            f"{missing}. First names found: {sample}."
        )
    vision_width, _, patch, _ = state["visual.conv1.weight"].shape
    rows = state["visual.positional_embedding"].shape[0]
    grid = math.isqrt(rows - 1)
    if grid * grid != rows - 1:
        raise ValueError(f"visual.positional_embedding has {rows} rows; expected 1 + g*g.")
    context_length, text_width = state["positional_embedding"].shape
    for name, width in (("vision", vision_width), ("text", text_width)):
        if width < 64 and (vision_heads if name == "vision" else text_heads) is None:
            raise ValueError(
                f"Cannot infer the {name} heads of width {width} (< 64); save the "
                "model with zegot_jax.clip.save_safetensors, which records them."
            )
    return CLIPSpec(
        embed_dim=int(state["text_projection"].shape[1]),
        image_size=int(grid * patch),
        patch_size=int(patch),
        vision_width=int(vision_width),
        vision_layers=_count_blocks(state, "visual.transformer.resblocks."),
        vision_heads=int(vision_heads or vision_width // 64),
        text_width=int(text_width),
        text_layers=_count_blocks(state, "transformer.resblocks."),
        text_heads=int(text_heads or text_width // 64),
        context_length=int(context_length),
        vocab_size=int(state["token_embedding.weight"].shape[0]),
        activation=activation,
        vision_mlp_width=_mlp_width(state, "visual.transformer.resblocks.", vision_width),
        text_mlp_width=_mlp_width(state, "transformer.resblocks.", text_width),
    )


def _mlp_width(state: dict[str, np.ndarray], prefix: str, width: int) -> int:
    """A tower's MLP hidden width from its first block (0: OpenAI's 4 x width, or no blocks)."""
    weight = state.get(f"{prefix}0.mlp.c_fc.weight")
    hidden = 0 if weight is None else int(weight.shape[0])
    return 0 if hidden == 4 * width else hidden


def openai_to_path(name: str, leaves: set[tuple]) -> tuple[tuple, str | None]:
    """Our NNX path of an OpenAI name, and how to lay out its array.

    Args:
        name: e.g. 'visual.transformer.resblocks.0.attn.in_proj_weight'.
        leaves: all paths of the model's flat state (to tell kernels from LayerNorm scales).

    Returns:
        (path, layout) with layout None (as is), 'linear' (transpose) or 'conv' (OIHW -> HWIO).
    """
    name = re.sub(r"in_proj_(weight|bias)$", r"in_proj.\1", name)
    parts = tuple(int(p) if p.isdigit() else p for p in name.split("."))
    if parts[-1] != "weight":
        return parts, None
    stem = parts[:-1]
    if stem + ("kernel",) in leaves:
        return stem + ("kernel",), "conv" if stem[-1] == "conv1" else "linear"
    if stem + ("embedding",) in leaves:
        return stem + ("embedding",), None
    return stem + ("scale",), None


def to_model_layout(value: np.ndarray, layout: str | None) -> np.ndarray:
    """OpenAI array layout -> ours (see `openai_to_path`)."""
    if layout == "linear":
        return value.T
    if layout == "conv":
        return value.transpose(2, 3, 1, 0)
    return value


def path_to_openai(path: tuple) -> tuple[str, str | None]:
    """Inverse of `openai_to_path`: (OpenAI name, layout of our array)."""
    *stem, leaf = (str(p) for p in path)
    layout = None
    if leaf in ("kernel", "scale", "embedding"):
        layout = ("conv" if stem[-1] == "conv1" else "linear") if leaf == "kernel" else None
        leaf = "weight"
    name = ".".join([*stem, leaf])
    return re.sub(r"in_proj\.(weight|bias)$", r"in_proj_\1", name), layout


def from_model_layout(value: np.ndarray, layout: str | None) -> np.ndarray:
    """Our array layout -> OpenAI's."""
    if layout == "linear":
        return value.T
    if layout == "conv":
        return value.transpose(3, 2, 0, 1)
    return value
