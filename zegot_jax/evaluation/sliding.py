"""Sliding-window inference: fixed-size crops, scores of overlapping windows averaged.

Windows are placed like mmseg's `slide_inference`: along an axis of length `H` with crop `c` and
stride `s` there are `max(H - c + s - 1, 0) // s + 1` windows starting at `i * s`, the last ones
shifted back so that they end at the border. An image smaller than the crop is padded at the bottom
and right with zeros (the mean colour after CLIP normalisation) to the crop size; the padded part of
the scores is dropped. All positions are static Python ints, so the function jits for a fixed image
shape.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"sliding_window: {name} must be a positive int or (h, w), got {value!r}.")
    return pair


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of length `size` (after padding to `crop`)."""
    size = max(size, crop)
    count = max(size - crop + stride - 1, 0) // stride + 1
    return [min(i * stride, size - crop) for i in range(count)]


def window_counts(
    shape: tuple[int, int], crop: int | tuple[int, int], stride: int | tuple[int, int]
) -> np.ndarray:
    """How many windows cover each pixel of an `[H, W]` image, `[H, W]` int (all >= 1)."""
    (ch, cw), (sh, sw) = _pair(crop, "crop"), _pair(stride, "stride")
    h, w = shape
    counts = np.zeros((max(h, ch), max(w, cw)), np.int64)
    for y in window_starts(h, ch, sh):
        for x in window_starts(w, cw, sw):
            counts[y : y + ch, x : x + cw] += 1
    return counts[:h, :w]


def sliding_window(
    fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    *,
    crop: int | tuple[int, int],
    stride: int | tuple[int, int],
    num_classes: int,
) -> jax.Array:
    """Scores a batch of images window by window.

    Args:
        fn: `crops [b, ch, cw, 3] -> scores [b, K, ch, cw]`; called once with all windows of all
            images stacked (`b = B * windows`).
        images: `[B, H, W, 3]`.
        crop: window size, int or (h, w).
        stride: step between windows, int or (h, w); at most the crop so windows cover the image.
        num_classes: K, the class dimension of `fn`'s output.

    Returns:
        `[B, K, H, W]` scores, each pixel the mean over the windows that contain it.
    """
    (ch, cw), (sh, sw) = _pair(crop, "crop"), _pair(stride, "stride")
    if sh > ch or sw > cw:
        raise ValueError(
            f"sliding_window: stride {(sh, sw)} larger than crop {(ch, cw)} would leave pixels uncovered."
        )
    if images.ndim != 4:
        raise ValueError(f"sliding_window: images must be [B, H, W, C], got {images.shape}.")
    b, h, w, _ = images.shape
    hp, wp = max(h, ch), max(w, cw)
    if (hp, wp) != (h, w):
        images = jnp.pad(images, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    starts = [(y, x) for y in window_starts(h, ch, sh) for x in window_starts(w, cw, sw)]
    crops = jnp.concatenate([images[:, y : y + ch, x : x + cw] for y, x in starts])
    scores = fn(crops)
    expected = (len(starts) * b, num_classes, ch, cw)
    if scores.shape != expected:
        raise ValueError(
            f"sliding_window: fn returned {scores.shape} for crops {crops.shape}; "
            f"expected {expected} ([b, K, crop_h, crop_w])."
        )
    total = jnp.zeros((b, num_classes, hp, wp), scores.dtype)
    for i, (y, x) in enumerate(starts):
        total = total.at[:, :, y : y + ch, x : x + cw].add(scores[i * b : (i + 1) * b])
    counts = window_counts((h, w), (ch, cw), (sh, sw))
    return total[:, :, :h, :w] / jnp.asarray(counts, scores.dtype)
