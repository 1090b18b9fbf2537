"""Evaluation of a trained (or training-free) model: one prediction over all classes per image.

Per image: logits from a sliding window (or the whole image), upsampled to the label's full
resolution, sigmoid, minus `seen_penalty` on seen classes (inductive calibration), argmax over all K;
the confusion matrix accumulates on device and yields mIoU(S), mIoU(U), hIoU and pixel accuracy.
Images of equal size are scored in batches sharded over every local device (`evaluate`).
"""

from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from zegot_jax import sharding, storage, strict_json
from zegot_jax.evaluation import metrics, sliding
from zegot_jax.models.functional import merge, split_model, upsample
from zegot_jax.models.zegot import ZegOT, training_free_config


def ensemble_log_scores(
    logits: jax.Array, free_logits: jax.Array, weight: float, num_valid: jax.Array | None = None
) -> jax.Array:
    """`log(sigmoid(logits)^(1-w) * softmax_K(free_logits)^w)`, classes on axis 1.

    The geometric ensemble of the trained model's class scores with CLIP's training-free class
    probabilities (as ZegFormer and zsseg combine their two branches), the same for every class.
    Classes from `num_valid` on (vocabulary padding) are left out of the softmax.
    """
    if num_valid is not None:
        valid = jnp.arange(free_logits.shape[1]) < num_valid
        free_logits = jnp.where(valid[None, :, None, None], free_logits, -jnp.inf)
    free = jax.nn.log_softmax(free_logits, axis=1)
    return (1.0 - weight) * jax.nn.log_sigmoid(logits) + weight * free


def score_activation(config: ml_collections.ConfigDict, reference: Any) -> Any:
    """What turns `make_logits_fn`'s output into scores: sigmoid, or exp of ensemble log-scores."""
    return jnp.exp if config.model.ensemble_weight > 0 and reference is not None else jax.nn.sigmoid


def make_logits_fn(graphdef: Any, config: ml_collections.ConfigDict):
    """Returns `logits(params, frozen, text, image [1,H,W,3], reference, num_valid) -> [1,K,H,W]`.

    Not jitted. The refined class logits at the size the image is scored at (sliding window or
    whole); with `model.ensemble_weight > 0` and `reference` (template features `[K, T, D]`), the
    `ensemble_log_scores` instead (see `score_activation`).
    """
    ev = config.eval
    weight = float(config.model.ensemble_weight)

    def logits_fn(params, frozen, text_features, image, reference=None, num_valid=None):
        model = merge(graphdef, params, frozen)
        num_classes = text_features.shape[0]
        ensemble = weight > 0 and reference is not None

        def crop_logits(crops):
            if not ensemble:
                out = model.segment(crops, text_features)
                return upsample(out.logits, crops.shape[1:3])
            out = model.segment(crops, text_features, reference)
            size = crops.shape[1:3]
            return ensemble_log_scores(
                upsample(out.logits, size), upsample(out.free_logits, size), weight, num_valid
            )

        if ev.mode == "slide":
            return sliding.sliding_window(
                crop_logits, image, crop=ev.crop, stride=ev.stride, num_classes=num_classes
            )
        if ev.mode == "whole":
            return crop_logits(image)
        raise ValueError(f"eval.mode={ev.mode!r}: use 'slide' or 'whole'.")

    return logits_fn


def make_predictor(graphdef: Any, config: ml_collections.ConfigDict):
    """Returns `predict(params, frozen, text, image [1,H,W,3], label_size, reference, num_valid)`.

    The result `[K, h, w]` is the class score map (sigmoid, no penalty; with the ensemble its
    exponentiated log-scores) at `label_size`. Jitted per image size; the text features of a
    vocabulary are computed once by the caller.
    """
    logits_fn = make_logits_fn(graphdef, config)

    @partial(jax.jit, static_argnames=("label_size",))
    def predict(params, frozen, text_features, image, label_size, reference=None, num_valid=None):
        logits = logits_fn(params, frozen, text_features, image, reference, num_valid)
        return score_activation(config, reference)(upsample(logits, label_size))[0]

    return predict


def streamed_scores(
    logits: jax.Array,
    penalty: jax.Array,
    num_valid: jax.Array,
    size: tuple[int, int],
    *,
    keep_scores: bool,
    activation=jax.nn.sigmoid,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """Full-resolution decisions one class at a time: memory `O(H*W)`, not `O(K*H*W)`.

    Args:
        logits: `[1, K, h, w]` at the scored size.
        penalty: `[K]` subtracted from the sigmoid scores before the arg-max.
        num_valid: classes past it are padding and never win.
        size: the output `(H, W)`.
        keep_scores: also return the `[K, H, W]` sigmoid scores (then memory is `O(K*H*W)`).
        activation: logits -> scores (`score_activation`; sigmoid unless ensembling).

    Returns:
        label map `[H, W]` int32 (the first class on ties, as `argmax`), per-class mean and max
        sigmoid score `[K]`, and the scores or None.
    """
    k = logits.shape[1]

    def body(c, carry):
        best, label, mean, top, scores = carry
        score = activation(upsample(jax.lax.dynamic_slice_in_dim(logits, c, 1, axis=1), size))[0, 0]
        calibrated = jnp.where(c < num_valid, score - penalty[c], -jnp.inf)
        wins = calibrated > best
        carry = (
            jnp.where(wins, calibrated, best),
            jnp.where(wins, c, label),
            mean.at[c].set(score.mean()),
            top.at[c].set(score.max()),
            scores if scores is None else scores.at[c].set(score),
        )
        return carry

    init = (
        jnp.full(size, -jnp.inf, logits.dtype),
        jnp.zeros(size, jnp.int32),
        jnp.zeros(k, logits.dtype),
        jnp.zeros(k, logits.dtype),
        jnp.zeros((k, *size), logits.dtype) if keep_scores else None,
    )
    _, label, mean, top, scores = jax.lax.fori_loop(0, k, body, init)
    return label, mean, top, scores


def text_features_of(
    graphdef: Any, params: Any, frozen: Any, class_names: Sequence[str], context_length: int
) -> jax.Array:
    """Text features `[K, N, D]` of a vocabulary, computed once (cached by the caller)."""
    model = merge(graphdef, params, frozen)
    inputs = model.text_inputs(class_names, context_length)
    return jax.jit(lambda p, f, x: merge(graphdef, p, f).text_features(x))(params, frozen, inputs)


def reference_features_of(
    graphdef: Any, params: Any, frozen: Any, config: ml_collections.ConfigDict, class_names: Sequence[str]
) -> jax.Array | None:
    """Template features `[K, T, D]` for the ensemble, or None when `ensemble_weight` is 0."""
    if not config.model.ensemble_weight > 0:
        return None
    model = merge(graphdef, params, frozen)
    return model.reference_features(class_names, config.clip.text_context_length)


def make_batch_scorer(graphdef: Any, config: ml_collections.ConfigDict, penalty: jax.Array):
    """Returns `confusion(params, frozen, text, images [B,H',W',3], labels [B,H,W], reference)`.

    Jitted: the `[K, K]` confusion matrix of one batch of equally sized images, each predicted as
    `make_predictor` predicts it (scores at the label's resolution, minus `penalty [K]`, argmax).
    Images and labels sharded over the devices of a mesh give a replicated count (XLA sums the
    devices' counts). Label 255 everywhere (a padding slot) counts nothing.
    """
    logits_fn = make_logits_fn(graphdef, config)
    num_classes = penalty.shape[0]

    @jax.jit
    def confusion(params, frozen, text_features, images, labels, reference=None):
        logits = logits_fn(params, frozen, text_features, images, reference, None)
        scores = score_activation(config, reference)(upsample(logits, labels.shape[1:]))
        pred = jnp.argmax(scores - penalty[None, :, None, None], axis=1)
        return metrics.confusion_matrix(pred, labels, num_classes)

    return confusion


def equal_shape_batches(
    examples: Iterable[dict[str, np.ndarray]], batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Groups consecutive valid examples of equal image and label shapes into padded batches.

    Yields `(images [batch_size, H', W', 3], labels [batch_size, H, W], count)`: the first `count`
    slots are examples in order, the rest zero images with all-ignore (255) labels. A batch ends
    when it is full or the next example's shapes differ, so no image is padded or resized and
    each is scored exactly as alone. Examples with `valid=False` (padding of an uneven
    per-process shard) are skipped.
    """
    images, labels = [], []

    def flush():
        count = len(images)
        pad = batch_size - count
        batch = (
            np.stack(images + [np.zeros_like(images[0])] * pad),
            np.stack(labels + [np.full_like(labels[0], 255)] * pad),
            count,
        )
        images.clear()
        labels.clear()
        return batch

    for ex in examples:
        if not ex.get("valid", True):
            continue
        image, label = np.asarray(ex["image"]), np.asarray(ex["label"], np.int32)
        if images and (image.shape != images[0].shape or label.shape != labels[0].shape):
            yield flush()
        images.append(image)
        labels.append(label)
        if len(images) == batch_size:
            yield flush()
    if images:
        yield flush()


def evaluate(
    config: ml_collections.ConfigDict,
    graphdef: Any,
    params: Any,
    frozen: Any,
    examples: Iterable[dict[str, np.ndarray]],
    class_names: Sequence[str],
    unseen: Sequence[int],
    *,
    seen_penalty: float,
) -> dict[str, Any]:
    """Scores `examples` (`{'image': [H',W',3] normalised, 'label': [H,W]}`) over all classes.

    Equally sized consecutive images are scored in batches of `eval.batch_size` rounded up to a
    multiple of this process's devices, sharded over them (`sharding.local_mesh`); the
    confusion matrix accumulates on device, and processes (each scoring its own shard of the
    images) add theirs once at the end. Every image is predicted exactly as alone.

    Returns:
        The summary of `metrics.summarize` plus `num_images`.
    """
    mesh = sharding.local_mesh()
    devices = mesh.devices.size
    batch_size = -(-max(int(config.eval.batch_size), 1) // devices) * devices
    text = text_features_of(graphdef, params, frozen, class_names, config.clip.text_context_length)
    reference = reference_features_of(graphdef, params, frozen, config, class_names)
    params, frozen, text, reference = sharding.to_local_replicas((params, frozen, text, reference), mesh)
    k = len(class_names)
    unseen_set = set(unseen)
    penalty = jnp.asarray([0.0 if i in unseen_set else seen_penalty for i in range(k)])
    confusion = make_batch_scorer(graphdef, config, penalty)
    batches = sharding.batch_sharding(mesh)
    conf = jax.device_put(jnp.zeros((k, k), jnp.int32), sharding.replicated(mesh))
    count = 0
    bar = tqdm(desc="eval", unit="img", disable=jax.process_index() != 0)
    for images, labels, num in equal_shape_batches(examples, batch_size):
        images, labels = jax.device_put((images, labels), batches)
        conf = conf + confusion(params, frozen, text, images, labels, reference)
        count += num
        bar.update(num)
    bar.close()
    conf, count = np.asarray(conf), np.asarray(count)
    if jax.process_count() > 1:  # each process scored its own shard
        conf = multihost_utils.process_allgather(conf).sum(0)
        count = multihost_utils.process_allgather(count).sum()
    summary = metrics.summarize(conf, class_names, unseen)
    summary["num_images"] = int(count)
    summary["seen_penalty"] = float(seen_penalty)
    return summary


def training_free_experiment(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of an experiment config whose `model` is the training-free baseline."""
    free = ml_collections.ConfigDict(config.to_dict())
    free.model = training_free_config(config.model)
    return free


def training_free_parts(config: ml_collections.ConfigDict, clip: Any) -> tuple[Any, Any, Any]:
    """`(graphdef, params, frozen)` of the training-free template baseline around `clip`."""
    model_cfg = ml_collections.FrozenConfigDict(training_free_config(config.model))
    return tuple(split_model(ZegOT(clip, model_cfg, rngs=nnx.Rngs(0))))


def evaluate_training_free(
    config: ml_collections.ConfigDict,
    clip: Any,
    examples: Iterable[dict[str, np.ndarray]],
    class_names: Sequence[str],
    unseen: Sequence[int],
) -> dict[str, Any]:
    """`evaluate` of the training-free baseline (`models.zegot.TRAINING_FREE`, no seen penalty).

    The same CLIP, layers, dense mode, images and protocol as the trained model, so the two
    rows differ only by what training changed.
    """
    graphdef, params, frozen = training_free_parts(config, clip)
    return evaluate(
        training_free_experiment(config),
        graphdef,
        params,
        frozen,
        examples,
        class_names,
        unseen,
        seen_penalty=0.0,
    )


TRAINING_FREE_PREFIX = "training_free_"
HEADLINE = ("miou_seen", "miou_unseen", "hiou")


def with_training_free(summary: dict[str, Any], free: dict[str, Any]) -> dict[str, Any]:
    """`summary` plus the baseline's headline scores as `training_free_miou_seen`, ...."""
    return {**summary, **{TRAINING_FREE_PREFIX + k: free[k] for k in (*HEADLINE, "miou")}}


def flat_row(summary: dict[str, Any]) -> dict[str, Any]:
    """The evaluation row of `metrics.jsonl`."""
    keys = (
        "miou_seen",
        "miou_unseen",
        "hiou",
        "pixel_acc",
        "miou",
        "num_images",
        "seen_penalty",
        *(TRAINING_FREE_PREFIX + k for k in (*HEADLINE, "miou")),
    )
    row = {k: summary[k] for k in keys if k in summary}
    row["per_class_iou"] = summary["per_class_iou"]
    return row


def headline(summary: dict[str, Any]) -> str:
    """One line per model: trained (with its seen penalty) and, if scored, training-free."""

    def line(name, prefix, penalty):
        scores = "  ".join(
            f"{label} {100 * summary[prefix + key]:.1f}"
            for label, key in zip(("mIoU(S)", "mIoU(U)", "hIoU"), HEADLINE, strict=True)
        )
        return f"{name:<14} {scores}  (seen penalty {penalty:g})"

    lines = [line("trained", "", summary.get("seen_penalty", 0.0))]
    if TRAINING_FREE_PREFIX + "hiou" in summary:
        lines.append(line("training-free", TRAINING_FREE_PREFIX, 0.0))
    return "\n".join(lines)


def markdown(summary: dict[str, Any], config: ml_collections.ConfigDict) -> str:
    """A results page: dataset, image count, headline numbers and the per-class table."""
    head = (
        f"# Results: {config.data.name} ({config.data.label_mode}), "
        f"{summary.get('num_images', '?')} images\n\n"
    )
    if TRAINING_FREE_PREFIX + "hiou" in summary:
        head += (
            "Trained against the training-free template baseline (hand-crafted templates, no "
            "DLFA, no OT, no training) on the same images with the same CLIP:\n\n```\n"
            f"{headline(summary)}\n```\n\n"
        )
    return head + metrics.markdown_table(summary) + "\n"


def write_results(out_dir: str, summary: dict[str, Any], config: ml_collections.ConfigDict) -> str:
    """Writes `results.md` and `results.json` into `out_dir` (local or `gs://`) from process 0.

    Returns:
        The Markdown (every process gets it; only process 0 writes).
    """
    text = markdown(summary, config)
    if jax.process_index() == 0:
        out = storage.path(out_dir)
        storage.write_text(out / "results.md", text, root=out_dir)
        storage.write_text(out / "results.json", strict_json.dumps(summary, indent=2), root=out_dir)
    return text
