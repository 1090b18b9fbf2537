"""The one table of CLIP variants; every width, depth and patch size derives from it."""

from __future__ import annotations

import dataclasses

ACTIVATIONS = ("quick_gelu", "gelu")


@dataclasses.dataclass(frozen=True)
class CLIPSpec:
    """Shape of a CLIP model (image tower, text tower and shared embedding).

    Attributes:
        embed_dim: joint embedding width D (output of both projections).
        image_size: training resolution; the stored position table has
            `(image_size // patch_size) ** 2 + 1` rows.
        patch_size: side of the square patches of the image tower.
        vision_width: token width W of the image tower.
        vision_layers: number of residual blocks of the image tower.
        vision_heads: attention heads of the image tower.
        text_width: token width of the text tower.
        text_layers: number of residual blocks of the text tower.
        text_heads: attention heads of the text tower.
        context_length: rows of the text position table (longest token sequence).
        vocab_size: rows of the token embedding table.
        activation: MLP non-linearity, 'quick_gelu' (OpenAI weights) or 'gelu' (exact, erf).
        vision_mlp_width, text_mlp_width: hidden width of each tower's MLP; 0 means 4 x the
            tower's width (OpenAI's; open_clip's mlp_ratio and Hugging Face's
            `intermediate_size` may differ, per tower).
    """

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int
    context_length: int = 77
    vocab_size: int = 49408
    activation: str = "quick_gelu"
    vision_mlp_width: int = 0
    text_mlp_width: int = 0

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}.")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}."
            )
        for tower in ("vision", "text"):
            width, heads = getattr(self, f"{tower}_width"), getattr(self, f"{tower}_heads")
            if heads < 1 or width % heads:
                raise ValueError(f"{tower}_width {width} is not divisible by {tower}_heads {heads}.")

    def mlp_width(self, tower: str) -> int:
        """The MLP hidden width of 'vision' or 'text'."""
        return getattr(self, f"{tower}_mlp_width") or 4 * getattr(self, f"{tower}_width")

    @property
    def grid_size(self) -> int:
        """Side of the token grid at the training resolution."""
        return self.image_size // self.patch_size


VARIANTS: dict[str, CLIPSpec] = {
    "ViT-B/32": CLIPSpec(512, 224, 32, 768, 12, 12, 512, 12, 8),
    "ViT-B/16": CLIPSpec(512, 224, 16, 768, 12, 12, 512, 12, 8),
    "ViT-L/14": CLIPSpec(768, 224, 14, 1024, 24, 16, 768, 12, 12),
    "ViT-L/14@336": CLIPSpec(768, 336, 14, 1024, 24, 16, 768, 12, 12),
    # For tests: real vocabulary (so `tokenize` output fits), everything else small and uneven.
    "tiny": CLIPSpec(
        embed_dim=24,
        image_size=40,
        patch_size=8,
        vision_width=48,
        vision_layers=3,
        vision_heads=3,
        text_width=32,
        text_layers=2,
        text_heads=2,
        context_length=16,
    ),
}


def known_heads(tower: str, width: int) -> int | None:
    """The heads of a `tower` ('vision' or 'text') of this `width` in `VARIANTS`, else None.

    A bare state dict gives widths but not heads; width // 64 is wrong for some models (open_clip's
    ViT-H/14 has 16 heads of 80 at width 1280), so only widths of a known variant are trusted.
    """
    for spec in VARIANTS.values():
        if getattr(spec, f"{tower}_width") == width:
            return getattr(spec, f"{tower}_heads")
    return None


# Hugging Face hub ids of OpenAI's released weights, so `load('ViT-B/16')` works like OpenAI's.
HUB_IDS: dict[str, str] = {
    "ViT-B/32": "openai/clip-vit-base-patch32",
    "ViT-B/16": "openai/clip-vit-base-patch16",
    "ViT-L/14": "openai/clip-vit-large-patch14",
    "ViT-L/14@336": "openai/clip-vit-large-patch14-336",
}


def get_spec(name: str) -> CLIPSpec:
    """Returns the spec of a named variant.

    Args:
        name: a key of `VARIANTS`, e.g. 'ViT-B/16'.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    if name not in VARIANTS:
        raise ValueError(f"Unknown CLIP variant {name!r}; known variants: {sorted(VARIANTS)}.")
    return VARIANTS[name]
