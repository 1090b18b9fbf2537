"""Does OT do anything? Diversity of the per-prompt maps and entropy of the transport plans.

Both are measured for the classes present in each image's ground truth, from the outputs of
`ZegOT.segment` (`similarity` and `plan`, `[L, B, K, h, w, N]`):

- prompt diversity: 1 - the mean Pearson correlation between the N per-prompt similarity maps of a
  (layer, image, class), averaged. 0 means the prompts see the same thing; larger means each prompt
  responds to different pixels.
- plan entropy: the entropy of each pixel's distribution over the prompts (the plan row, which sums
  to 1), divided by log N and averaged. 1 is the uniform plan (no OT); lower means pixels commit to
  particular prompts.
"""

from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zegot_jax.models.functional import merge


def map_diversity(similarity: jax.Array) -> jax.Array:
    """`[..., h, w, N]` -> `[...]`: 1 - mean pairwise correlation of the N maps."""
    n = similarity.shape[-1]
    x = similarity.reshape(*similarity.shape[:-3], -1, n)
    x = x - x.mean(axis=-2, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.maximum((x * x).sum(axis=-2, keepdims=True), 1e-12))
    corr = jnp.einsum("...mi,...mj->...ij", x, x)
    off_diagonal = (corr.sum(axis=(-1, -2)) - jnp.trace(corr, axis1=-2, axis2=-1)) / (n * (n - 1))
    return 1.0 - off_diagonal


def plan_entropy(plan: jax.Array) -> jax.Array:
    """`[..., h, w, N]` rows summing to 1 -> `[...]`: mean row entropy / log N."""
    n = plan.shape[-1]
    p = plan / jnp.maximum(plan.sum(-1, keepdims=True), 1e-12)
    h = -(p * jnp.log(jnp.maximum(p, 1e-30))).sum(-1)
    return h.mean(axis=(-1, -2)) / jnp.log(n)


def prompt_statistics(
    graphdef: Any,
    params: Any,
    frozen: Any,
    text_features: jax.Array,
    examples: Iterable[dict[str, np.ndarray]],
    *,
    patch: int,
    max_images: int = 64,
) -> dict[str, float]:
    """Mean prompt diversity and plan entropy over the GT classes of up to `max_images` images.

    Images are cropped to a multiple of the patch size and segmented whole.
    """

    @jax.jit
    def stats(params, frozen, image):
        out = merge(graphdef, params, frozen).segment(image, text_features)
        return map_diversity(out.similarity)[:, 0], plan_entropy(out.plan)[:, 0]  # [L, K]

    diversity, entropy = [], []
    for image, present in labelled_crops(examples, patch, text_features.shape[0], max_images):
        d, e = stats(params, frozen, image)
        diversity.append(np.asarray(d)[:, present].mean())
        entropy.append(np.asarray(e)[:, present].mean())
    if not diversity:
        raise ValueError("No evaluation image had a labelled class: nothing to measure.")
    return {"prompt_diversity": float(np.mean(diversity)), "plan_entropy": float(np.mean(entropy))}


def labelled_crops(
    examples: Iterable[dict[str, np.ndarray]], patch: int, num_classes: int, max_images: int
) -> Iterator[tuple[jax.Array, list[int]]]:
    """Yields `(image [1, h, w, 3] cropped to whole patches, the classes < num_classes it has)`.

    One for each valid example among the first `max_images` that has a labelled class.
    """
    for count, ex in enumerate(examples):
        if count >= max_images:
            break
        if not ex.get("valid", True):
            continue
        image = np.asarray(ex["image"])
        h, w = (image.shape[0] // patch) * patch, (image.shape[1] // patch) * patch
        present = [k for k in np.unique(ex["label"]) if k < num_classes]
        if present:
            yield jnp.asarray(image[None, :h, :w]), present
