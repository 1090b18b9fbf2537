"""Pieces of the train step: transductive pseudo-labels and the learning-rate schedule."""

import jax.numpy as jnp
import ml_collections
import numpy as np

from zegot_jax.train import optim, step


def test_pseudo_labels_replace_only_unseen_pixels_with_the_best_unseen_class():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 6, 5, 5)), jnp.float32)
    labels = rng.choice([0, 1, 2, 3, 4, 5, 255], size=(2, 5, 5)).astype(np.int32)
    unseen = (2, 4)
    out = np.asarray(step.pseudo_label(logits, jnp.asarray(labels), unseen))
    best = np.where(np.asarray(logits)[:, 2] >= np.asarray(logits)[:, 4], 2, 4)
    is_unseen = np.isin(labels, unseen)
    np.testing.assert_array_equal(out[is_unseen], best[is_unseen])
    np.testing.assert_array_equal(out[~is_unseen], labels[~is_unseen])


def test_poly_schedule_with_linear_warmup():
    cfg = ml_collections.ConfigDict(dict(learning_rate=2e-4, min_learning_rate=1e-6,
                                         warmup_steps=1500, poly_power=0.9))
    schedule = optim.learning_rate_schedule(cfg, 20_000)
    np.testing.assert_allclose(float(schedule(0)), 2e-4 * 1e-6, rtol=0.05)  # warm-up ratio 1e-6
    poly = lambda t: (2e-4 - 1e-6) * (1 - t / 20_000) ** 0.9 + 1e-6  # noqa: E731
    np.testing.assert_allclose(float(schedule(1500)), poly(1500), rtol=1e-5)
    np.testing.assert_allclose(float(schedule(750)), poly(750) * (1 - 0.5 * (1 - 1e-6)),
                               rtol=1e-5)
    np.testing.assert_allclose(float(schedule(20_000)), 1e-6, rtol=1e-5)
