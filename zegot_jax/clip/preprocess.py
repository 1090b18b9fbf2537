"""CLIP's input normalisation (the mean and std OpenAI trained with)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def normalize(images: np.ndarray | jax.Array) -> jax.Array:
    """Maps uint8 RGB images to CLIP's float32 input: `(x / 255 - MEAN) / STD` per channel.

    Args:
        images: uint8 `[..., H, W, 3]` (channels last), values 0..255.

    Returns:
        float32 array of the same shape.

    Raises:
        TypeError: if `images` is not uint8 (float images in [0, 1] need only
            `(x - MEAN) / STD`; this function refuses them so they are not divided by 255 twice).
        ValueError: if the last axis is not 3.
    """
    dtype = getattr(images, "dtype", None)
    if dtype != np.uint8:
        raise TypeError(f"normalize expects uint8 images [..., H, W, 3]; got dtype {dtype}.")
    if images.shape[-1] != 3:
        raise ValueError(
            f"normalize expects RGB channels last [..., H, W, 3]; got shape {tuple(images.shape)}."
        )
    x = jnp.asarray(images, jnp.float32) / 255.0
    return (x - jnp.asarray(MEAN, jnp.float32)) / jnp.asarray(STD, jnp.float32)
