"""ZegOT as pure functions of its states.

Split into graph, `Trainable` and frozen state, merge back, and the resize of score maps to label
resolution that training and evaluation share.

`nnx.split(model, Trainable, ...)` gives the static graph, the `Trainable` state (prompt contexts
and DLFA projections: the only thing differentiated, optimised and checkpointed) and the frozen
rest (CLIP), which is replicated once and passed beside the train state.
"""

from typing import Any, NamedTuple

import jax
from flax import nnx

from zegot_jax.models.prompts import Trainable
from zegot_jax.models.zegot import ZegOT


class SplitModel(NamedTuple):
    """A ZegOT model in pieces: `nnx.merge(graphdef, params, frozen)` rebuilds it."""

    graphdef: Any
    params: nnx.State  # Trainable only
    frozen: nnx.State  # CLIP and everything else


def split_model(model: ZegOT) -> SplitModel:
    """Splits into graph, `Trainable` state and frozen state."""
    graphdef, params, frozen = nnx.split(model, Trainable, ...)
    return SplitModel(graphdef, params, frozen)


def merge(graphdef: Any, params: nnx.State, frozen: nnx.State) -> ZegOT:
    """Inverse of `split_model`."""
    return nnx.merge(graphdef, params, frozen)


def upsample(logits: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of `[B, K, h, w]` maps to `[B, K, *size]` (half-pixel centres)."""
    b, k = logits.shape[:2]
    return jax.image.resize(logits, (b, k, *size), method="bilinear")
