"""Tests for zegot_jax.evaluation.metrics against an independent NumPy implementation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zegot_jax.evaluation import metrics


def _numpy_confusion(pred, label, k, ignore=255):
    conf = np.zeros((k, k), np.int64)
    keep = label != ignore
    np.add.at(conf, (label[keep], pred[keep]), 1)
    return conf


def _numpy_summary(conf, unseen):
    k = conf.shape[0]
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union  # nan where union == 0
    seen = np.setdiff1d(np.arange(k), unseen)
    s, u = np.nanmean(iou[seen]), np.nanmean(iou[unseen])
    return iou, s, u, 2 * s * u / (s + u), inter.sum() / conf.sum(), np.nanmean(iou)


def _random_batch(seed, k=7, shape=(3, 17, 23)):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, k, shape).astype(np.int32)
    label[label == 2] = 0  # class 2 never labelled ...
    pred = np.where(rng.random(shape) < 0.6, label, rng.integers(0, k, shape)).astype(np.int32)
    pred[pred == 2] = 1  # ... nor predicted: union 0
    pred[pred == 4] = 3  # class 4 labelled, never predicted: IoU 0
    label[rng.random(shape) < 0.15] = 255
    return pred, label


def test_confusion_matches_numpy_and_accumulates_under_jit():
    k = 7
    conf_fn = jax.jit(metrics.confusion_matrix, static_argnums=2)
    total = jnp.zeros((k, k), jnp.int32)
    expected = np.zeros((k, k), np.int64)
    for seed in range(3):
        pred, label = _random_batch(seed, k)
        total = total + conf_fn(jnp.asarray(pred), jnp.asarray(label), k)
        expected += _numpy_confusion(pred, label, k)
    assert total.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(total), expected)
    assert expected[2].sum() == 0 and expected[:, 2].sum() == 0 and expected[:, 4].sum() == 0


def test_out_of_range_ids_are_skipped():
    pred = jnp.asarray([0, 1, 5, 1, 0])
    label = jnp.asarray([0, 255, 1, 9, 1])
    conf = metrics.confusion_matrix(pred, label, 2)
    np.testing.assert_array_equal(conf, [[1, 0], [1, 0]])


def test_summary_matches_numpy_nanmean():
    k, unseen = 7, [4, 5, 2]
    pred, label = _random_batch(3, k)
    conf = _numpy_confusion(pred, label, k)
    names = [f"class {c}" for c in range(k)]
    summary = metrics.summarize(
        metrics.confusion_matrix(jnp.asarray(pred), jnp.asarray(label), k), names, unseen
    )
    iou, s, u, h, acc, miou = _numpy_summary(conf, unseen)
    assert summary["per_class_iou"]["class 2"] is None and np.isnan(iou[2])
    assert summary["per_class_iou"]["class 4"] == 0.0
    for c in range(k):
        if c != 2:
            assert summary["per_class_iou"][names[c]] == pytest.approx(iou[c], rel=1e-12)
    assert summary["miou_seen"] == pytest.approx(s, rel=1e-12)
    assert summary["miou_unseen"] == pytest.approx(u, rel=1e-12)
    assert summary["hiou"] == pytest.approx(h, rel=1e-12)
    assert summary["pixel_acc"] == pytest.approx(acc, rel=1e-12)
    assert summary["miou"] == pytest.approx(miou, rel=1e-12)
    assert summary["num_pixels"] == conf.sum()
    assert summary["unseen_classes"] == ["class 4", "class 5", "class 2"]
    json.loads(json.dumps(summary, allow_nan=False))


def test_summary_edge_cases():
    conf = np.array([[5, 0], [0, 0]])
    summary = metrics.summarize(conf, ["a", "b"], [])
    assert summary["miou_seen"] == 1.0 and summary["miou_unseen"] is None
    assert summary["hiou"] is None and summary["per_class_iou"]["b"] is None
    zero = metrics.summarize(np.array([[0, 3], [2, 0]]), ["a", "b"], [1])
    assert zero["hiou"] == 0.0 and zero["pixel_acc"] == 0.0
    with pytest.raises(ValueError, match="class names"):
        metrics.summarize(conf, ["a", "b", "c"], [])
    with pytest.raises(ValueError, match="unseen"):
        metrics.summarize(conf, ["a", "b"], [2])


def test_markdown_table():
    summary = metrics.summarize(np.array([[3, 1], [0, 4]]), ["cat", "tv monitor"], [1])
    text = metrics.markdown_table(summary)
    assert "| 75.0 | 80.0 | 77.4 | 77.5 | 87.5 |" in text
    assert "| tv monitor | unseen | 80.0 |" in text and "| cat | seen | 75.0 |" in text
    summary["per_class_iou"]["cat"] = None
    assert "| cat | seen | n/a |" in metrics.markdown_table(summary)
