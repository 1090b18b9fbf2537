"""Evaluation of a trained (or training-free) model: one prediction over all classes per image.

Per image: logits from a sliding window (or the whole image), upsampled to the label's full
resolution, sigmoid, minus `seen_penalty` on seen classes (inductive calibration), argmax over all K;
the confusion matrix accumulates on device and yields mIoU(S), mIoU(U), hIoU and pixel accuracy.
"""

import json
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from zegot_jax.evaluation import metrics, sliding
from zegot_jax.train.state import merge
from zegot_jax.train.step import upsample


def make_predictor(graphdef: Any, config: ml_collections.ConfigDict):
    """Returns `predict(params, frozen, text_features, image [1,H,W,3], label_size) -> [K,h,w]`.

    The result is the calibrated class score map (sigmoid, no penalty) at `label_size`. Jitted per
    image size; the text features of a vocabulary are computed once by the caller.
    """
    ev = config.eval

    @partial(jax.jit, static_argnames=("label_size",))
    def predict(params, frozen, text_features, image, label_size):
        model = merge(graphdef, params, frozen)
        num_classes = text_features.shape[0]

        def crop_logits(crops):
            out = model.segment(crops, text_features)
            return upsample(out.logits, crops.shape[1:3])

        if ev.mode == "slide":
            logits = sliding.sliding_window(crop_logits, image, crop=ev.crop, stride=ev.stride,
                                            num_classes=num_classes)
        elif ev.mode == "whole":
            logits = crop_logits(image)
        else:
            raise ValueError(f"eval.mode={ev.mode!r}: use 'slide' or 'whole'.")
        return jax.nn.sigmoid(upsample(logits, label_size))[0]

    return predict


def text_features_of(graphdef: Any, params: Any, frozen: Any, class_names: Sequence[str],
                     context_length: int) -> jax.Array:
    """Text features `[K, N, D]` of a vocabulary, computed once (cached by the caller)."""
    model = merge(graphdef, params, frozen)
    inputs = model.text_inputs(class_names, context_length)
    return jax.jit(lambda p, f, x: merge(graphdef, p, f).text_features(x))(params, frozen, inputs)


def evaluate(config: ml_collections.ConfigDict, graphdef: Any, params: Any, frozen: Any,
             examples: Iterable[dict[str, np.ndarray]], class_names: Sequence[str],
             unseen: Sequence[int], *, seen_penalty: float) -> dict[str, Any]:
    """Scores `examples` (`{'image': [H',W',3] normalised, 'label': [H,W]}`) over all classes.

    Returns:
      The summary of `metrics.summarize` plus `num_images`.
    """
    text = text_features_of(graphdef, params, frozen, class_names, config.clip.text_context_length)
    predict = make_predictor(graphdef, config)
    k = len(class_names)
    unseen_set = set(unseen)
    penalty = jnp.asarray([0.0 if i in unseen_set else seen_penalty for i in range(k)])
    conf = jnp.zeros((k, k), jnp.int32)
    count = 0
    for ex in tqdm(examples, desc="eval", unit="img", disable=jax.process_index() != 0):
        if not ex.get("valid", True):  # padding slot of an uneven per-process shard
            continue
        image = jnp.asarray(ex["image"])[None]
        label = np.asarray(ex["label"])
        scores = predict(params, frozen, text, image, label.shape)
        pred = jnp.argmax(scores - penalty[:, None, None], axis=0)
        conf = conf + metrics.confusion_matrix(pred, jnp.asarray(label), k)
        count += 1
    conf, count = np.asarray(conf), np.asarray(count)
    if jax.process_count() > 1:  # each process scored its own shard
        conf = multihost_utils.process_allgather(conf).sum(0)
        count = multihost_utils.process_allgather(count).sum()
    summary = metrics.summarize(conf, class_names, unseen)
    summary["num_images"] = int(count)
    return summary


def flat_row(summary: dict[str, Any]) -> dict[str, Any]:
    """The evaluation row of `metrics.jsonl`."""
    keys = ("miou_seen", "miou_unseen", "hiou", "pixel_acc", "miou", "num_images")
    row = {k: summary[k] for k in keys if k in summary}
    row["per_class_iou"] = summary["per_class_iou"]
    return row


def markdown(summary: dict[str, Any], config: ml_collections.ConfigDict) -> str:
    """A results page: dataset, image count, headline numbers and the per-class table."""
    head = (f"# Results: {config.data.name} ({config.data.label_mode}), "
            f"{summary.get('num_images', '?')} images\n\n")
    return head + metrics.markdown_table(summary) + "\n"


def write_results(out_dir: str, summary: dict[str, Any], config: ml_collections.ConfigDict) -> str:
    """Writes `results.md` and `results.json` into `out_dir`; returns the Markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(summary, config)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return text
