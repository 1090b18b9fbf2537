"""Building the model from a config: the frozen CLIP it names and the segmenter around it.

Splitting the built model into trainable and frozen state is `zegot_jax.models.functional`.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from zegot_jax import clip as clip_lib
from zegot_jax.models.zegot import ZegOT

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    """The backbone's compute dtype named by `clip.dtype`."""
    if config.clip.dtype not in DTYPES:
        raise ValueError(f"clip.dtype={config.clip.dtype!r}: use one of {sorted(DTYPES)}.")
    return DTYPES[config.clip.dtype]


def load_clip(config: ml_collections.ConfigDict, *, offline: bool = False) -> clip_lib.CLIP:
    """The frozen backbone named by `clip.weights`.

    With `offline`, a hub id comes from the local cache only: a run loaded for inference fetches
    nothing.

    'random:<variant>' builds a randomly initialised CLIP (tests, smoke runs); 'synthetic' is the
    synthetic world's small CLIP (pretrained and cached on first use); anything else is a path or a
    Hugging Face hub id given to `zegot_jax.clip.load`.
    """
    weights, dtype = config.clip.weights, compute_dtype(config)
    if weights.startswith("random:"):
        spec = clip_lib.get_spec(weights.split(":", 1)[1])
        return clip_lib.CLIP(spec, rngs=nnx.Rngs(config.seed), dtype=dtype)
    if weights == "synthetic":
        from zegot_jax.synthetic import pretrain  # noqa: PLC0415 (only the synthetic world needs it)

        return pretrain.pretrained_clip(config.synthetic.pretrain, dtype=dtype)
    return clip_lib.load(
        weights,
        dtype=dtype,
        activation=config.clip.get("activation") or None,
        vision_heads=config.clip.get("vision_heads") or None,
        text_heads=config.clip.get("text_heads") or None,
        offline=offline,
    )


def build_model(config: ml_collections.ConfigDict, clip: clip_lib.CLIP | None = None) -> ZegOT:
    """The segmenter around `clip` (loaded from the config when not given)."""
    clip = clip if clip is not None else load_clip(config)
    frozen_cfg = ml_collections.FrozenConfigDict(config.model)
    return ZegOT(clip, frozen_cfg, rngs=nnx.Rngs(params=jax.random.key(config.seed)))
