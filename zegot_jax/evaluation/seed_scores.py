"""`evaluate_seeds`: S seeds' parameters scored on the same images in one compiled program.

The per-image computation is `evaluator.evaluate`'s (`make_logits_fn`, upsampling to the label,
the score activation, the seen penalty, the arg-max over all K classes, the confusion matrix),
vmapped over a chunk of equal-size images and over the seed axis of the trainable parameters; the
frozen CLIP is shared. `prompt_statistics_seeds` does the same for `prompt_stats`.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zegot_jax.evaluation import evaluator, metrics
from zegot_jax.evaluation.prompt_stats import labelled_crops, map_diversity, plan_entropy
from zegot_jax.models.functional import merge, upsample


def _chunks(examples: Iterable[dict[str, np.ndarray]], size: int):
    """Valid examples stacked `size` at a time: `(images [b, H', W', 3], labels [b, H, W])`."""
    images, labels = [], []
    for ex in examples:
        if not ex.get("valid", True):
            continue
        images.append(np.asarray(ex["image"]))
        labels.append(np.asarray(ex["label"], np.int32))
        if len(images) == size:
            yield _stack(images, labels)
            images, labels = [], []
    if images:
        yield _stack(images, labels)


def _stack(images, labels):
    if len({im.shape for im in images}) > 1 or len({lb.shape for lb in labels}) > 1:
        raise ValueError(
            "evaluate_seeds needs equal-size evaluation images (the synthetic world's "
            "are); score other datasets one seed at a time with evaluator.evaluate."
        )
    return np.stack(images), np.stack(labels)


def text_features_seeds(
    graphdef: Any, params: Any, frozen: Any, class_names: Sequence[str], context_length: int, num_seeds: int
) -> jax.Array:
    """Text features `[S, K, N, D]` of a vocabulary, one set per seed's parameters `[S, ...]`."""
    first = jax.tree.map(lambda leaf: leaf[0], params)
    text_inputs = merge(graphdef, first, frozen).text_inputs(class_names, context_length)
    features = jax.vmap(
        lambda p, f, x: merge(graphdef, p, f).text_features(x), in_axes=(0, None, None), axis_size=num_seeds
    )
    return jax.jit(features)(params, frozen, text_inputs)


def evaluate_seeds(
    config: ml_collections.ConfigDict,
    graphdef: Any,
    params: Any,
    frozen: Any,
    examples: Iterable[dict[str, np.ndarray]],
    class_names: Sequence[str],
    unseen: Sequence[int],
    *,
    seen_penalty: float,
    num_seeds: int,
    chunk: int = 50,
    text: jax.Array | None = None,
) -> list[dict[str, Any]]:
    """Scores `examples` with each of S seeds' parameters (leaves `[S, ...]`).

    Args:
        config: the config the seeds are scored under (reads `model`, `eval` and
          `clip.text_context_length`).
        graphdef: the model graph, from `functional.split_model`.
        params: the seeds' `Trainable` states, leaves `[S, ...]`.
        frozen: the frozen state (CLIP), shared by every seed.
        examples: `{'image': [H', W', 3] normalised, 'label': [H, W]}` of one size, as
          `DataSetup.eval_iterator()` gives for the synthetic world.
        class_names: the K classes scored.
        unseen: ids of the unseen classes (not penalised; `metrics.summarize`'s split).
        seen_penalty: subtracted from the seen classes' scores before the arg-max.
        num_seeds: S.
        chunk: images per call of the compiled program (the last chunk may be smaller: one more
          compile).
        text: the seeds' text features `[S, K, N, D]` if already computed (`text_features_seeds`).

    Returns:
        One `metrics.summarize` summary per seed, plus `num_images` and `seen_penalty`.
    """
    if text is None:
        text = text_features_seeds(
            graphdef, params, frozen, class_names, config.clip.text_context_length, num_seeds
        )
    first = jax.tree.map(lambda leaf: leaf[0], params)
    reference = evaluator.reference_features_of(graphdef, first, frozen, config, class_names)
    logits_fn = evaluator.make_logits_fn(graphdef, config)
    activation = evaluator.score_activation(config, reference)
    k = len(class_names)
    penalty = jnp.asarray([0.0 if i in set(unseen) else seen_penalty for i in range(k)])

    def one_image(p, f, t, image, label):  # [H', W', 3], [H, W] -> [K, K]
        logits = logits_fn(p, f, t, image[None], reference)
        scores = activation(upsample(logits, label.shape))[0]
        pred = jnp.argmax(scores - penalty[:, None, None], axis=0)
        return metrics.confusion_matrix(pred, label, k)

    def one_seed(p, f, t, images, labels):  # -> [K, K]
        return jax.vmap(one_image, in_axes=(None, None, None, 0, 0))(p, f, t, images, labels).sum(0)

    confusion = jax.jit(jax.vmap(one_seed, in_axes=(0, None, 0, None, None), axis_size=num_seeds))
    conf, count = np.zeros((num_seeds, k, k), np.int64), 0
    for images, labels in _chunks(examples, chunk):
        conf += np.asarray(confusion(params, frozen, text, images, labels), np.int64)
        count += len(images)
    summaries = []
    for s in range(num_seeds):
        summary = metrics.summarize(conf[s], class_names, unseen)
        summaries.append({**summary, "num_images": count, "seen_penalty": float(seen_penalty)})
    return summaries


def prompt_statistics_seeds(
    graphdef: Any,
    params: Any,
    frozen: Any,
    text_features: jax.Array,
    examples: Iterable[dict[str, np.ndarray]],
    *,
    patch: int,
    num_seeds: int,
    max_images: int = 64,
) -> list[dict[str, float]]:
    """`prompt_stats.prompt_statistics` of each seed (params `[S, ...]`, text `[S, K, N, D]`)."""

    def stats(p, f, t, image):
        out = merge(graphdef, p, f).segment(image, t)
        return map_diversity(out.similarity)[:, 0], plan_entropy(out.plan)[:, 0]  # [L, K]

    stats = jax.jit(jax.vmap(stats, in_axes=(0, None, 0, None), axis_size=num_seeds))
    diversity, entropy = [], []
    for image, present in labelled_crops(examples, patch, text_features.shape[1], max_images):
        d, e = stats(params, frozen, text_features, image)
        diversity.append(np.asarray(d)[:, :, present].mean(axis=(1, 2)))  # [S]
        entropy.append(np.asarray(e)[:, :, present].mean(axis=(1, 2)))
    if not diversity:
        raise ValueError("No evaluation image had a labelled class: nothing to measure.")
    diversity, entropy = np.mean(diversity, axis=0), np.mean(entropy, axis=0)
    return [
        {"prompt_diversity": float(diversity[s]), "plan_entropy": float(entropy[s])} for s in range(num_seeds)
    ]
