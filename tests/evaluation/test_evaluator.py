"""Batched evaluation scores every image exactly as the per-image predictor does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from inference_fixtures import smoke_config

from configs import synthetic
from zegot_jax.data.setup import DataSetup
from zegot_jax.evaluation import evaluator, metrics
from zegot_jax.models import build as build_lib
from zegot_jax.models import functional


def _per_image_confusion(config, parts, params, examples, names, unseen, seen_penalty):
    """The reference: one image at a time through `make_predictor`, counted on the host."""
    g, f = parts.graphdef, parts.frozen
    text = evaluator.text_features_of(g, params, f, names, config.clip.text_context_length)
    reference = evaluator.reference_features_of(g, params, f, config, names)
    predict = evaluator.make_predictor(g, config)
    k = len(names)
    shift = np.asarray([0.0 if i in unseen else seen_penalty for i in range(k)])
    conf = np.zeros((k, k), np.int64)
    for ex in examples:
        if not ex.get("valid", True):
            continue
        label = np.asarray(ex["label"])
        scores = np.asarray(predict(params, f, text, jnp.asarray(ex["image"])[None], label.shape, reference))
        pred = np.argmax(scores - shift[:, None, None], axis=0)
        keep = label < k
        np.add.at(conf, (label[keep], pred[keep]), 1)
    return conf, sum(ex.get("valid", True) for ex in examples)


def _check_same(config, parts, params, examples, names, unseen, penalty=0.1):
    conf, count = _per_image_confusion(config, parts, params, examples, names, unseen, penalty)
    summary = evaluator.evaluate(
        config, parts.graphdef, params, parts.frozen, examples, names, unseen, seen_penalty=penalty
    )
    expected = metrics.summarize(conf, names, unseen)
    assert summary["num_images"] == count
    assert summary["per_class_iou"] == expected["per_class_iou"]
    assert summary["pixel_acc"] == expected["pixel_acc"]


def _moved(parts):
    """Parameters moved away from their initialisation, so classes are told apart."""
    leaves, tree = jax.tree.flatten(parts.params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(
        tree, [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
    )


def test_equal_shape_batches_keep_order_pad_and_split_on_shape_changes():
    def ex(h, value, valid=True):
        return {
            "image": np.full((h, 4, 3), value, np.float32),
            "label": np.full((h, 4), value, np.int32),
            "valid": valid,
        }

    examples = [ex(2, 1), ex(2, 2), ex(2, 0, valid=False), ex(2, 3), ex(3, 4), ex(2, 5)]
    batches = list(evaluator.equal_shape_batches(examples, 2))
    assert [b[2] for b in batches] == [2, 1, 1, 1]
    assert [b[0][:, 0, 0, 0].tolist() for b in batches] == [[1, 2], [3, 0], [4, 0], [5, 0]]
    assert batches[1][1][1].tolist() == [[255] * 4] * 2  # the padding slot counts nothing


@pytest.mark.parametrize("batch_size", [1, 3])
def test_benchmark_like_images_of_several_sizes(tiny_clip, batch_size):
    """Sliding windows, images of three sizes in runs, an invalid slot, ignore pixels."""
    config = smoke_config()
    config.eval.batch_size = batch_size
    names, unseen = ("cat", "dog", "sky", "road", "tree"), (1, 3)
    parts = functional.split_model(build_lib.build_model(config, tiny_clip))
    rng = np.random.default_rng(0)
    examples = []
    for h, w in [(40, 48)] * 4 + [(32, 32)] * 2 + [(56, 40)]:
        label = rng.integers(0, len(names), (h + 5, w + 3)).astype(np.int32)
        label[:3] = 255
        examples.append({"image": rng.normal(size=(h, w, 3)).astype(np.float32), "label": label})
    examples.insert(
        2, {"image": np.zeros((1, 1, 3), np.float32), "label": np.full((1, 1), 255, np.int32), "valid": False}
    )
    _check_same(config, parts, _moved(parts), examples, names, unseen)


def test_synthetic_world_evaluation(tiny_clip):
    """The synthetic world's held-out images (equal sizes: full batches and a ragged last one)."""
    config = synthetic.get_config("smoke")
    config.clip.weights = "random:tiny"
    config.model.layers = (1, 2)
    config.synthetic.eval_images = 7
    config.eval.batch_size = 4
    parts = functional.split_model(build_lib.build_model(config, tiny_clip))
    data = DataSetup.from_config(config)
    examples = list(data.eval_iterator())
    _check_same(config, parts, _moved(parts), examples, data.class_names, data.unseen)
