"""Resizing a ViT position table to another token grid (torch's bilinear rule)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """`[size_out, size_in]` weights of 1-D linear interpolation, half-pixel centres.

    Source coordinate `(i + 0.5) * size_in / size_out - 0.5`, clamped at 0, neighbours clamped at
    the last index: the rule of `torch.nn.functional.interpolate(mode='bilinear',
    align_corners=False)` without antialiasing, in both directions.
    """
    src = (np.arange(size_out, dtype=np.float64) + 0.5) * (size_in / size_out) - 0.5
    src = np.maximum(src, 0.0)
    lo = np.floor(src).astype(np.int64)
    lo = np.minimum(lo, size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    matrix = np.zeros((size_out, size_in), np.float64)
    rows = np.arange(size_out)
    np.add.at(matrix, (rows, lo), 1.0 - frac)
    np.add.at(matrix, (rows, hi), frac)
    return matrix.astype(np.float32)


def resize_pos_embed(table: jax.Array, grid: Sequence[int]) -> jax.Array:
    """Resizes a ViT position table to another token grid; the class position is kept.

    Bilinear, align_corners=False, not antialiased: equal to torch's
    `interpolate(mode='bilinear', align_corners=False)` on the `[W, g, g]` patch table, when
    upsampling and when downsampling.

    Args:
        table: `[1 + g*g, W]`, class position first, patch positions row-major.
        grid: target token grid `(h, w)`.

    Returns:
        `[1 + h*w, W]`; `table` itself when the grid is unchanged.
    """
    h, w = int(grid[0]), int(grid[1])
    g = int(round((table.shape[0] - 1) ** 0.5))
    if g * g != table.shape[0] - 1:
        raise ValueError(f"Position table has {table.shape[0]} rows; expected 1 + g*g for a square grid.")
    if (h, w) == (g, g):
        return table
    patch = table[1:].reshape(g, g, table.shape[-1])
    rows, cols = _bilinear_matrix(g, h), _bilinear_matrix(g, w)
    out = jnp.einsum(
        "hi,wj,ijc->hwc", rows, cols, patch.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    )
    out = out.reshape(h * w, -1).astype(table.dtype)
    return jnp.concatenate([table[:1], out], axis=0)
