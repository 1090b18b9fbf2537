"""The loss the train step differentiates (`zegot_jax.models.losses`).

Transductive pseudo-labels, per-image and point-sampled forms of focal + dice.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from zegot_jax.models import losses


def test_pseudo_labels_replace_only_unseen_pixels_with_the_best_unseen_class():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 6, 5, 5)), jnp.float32)
    labels = rng.choice([0, 1, 2, 3, 4, 5, 255], size=(2, 5, 5)).astype(np.int32)
    unseen = (2, 4)
    out = np.asarray(losses.pseudo_label(logits, jnp.asarray(labels), unseen))
    best = np.where(np.asarray(logits)[:, 2] >= np.asarray(logits)[:, 4], 2, 4)
    is_unseen = np.isin(labels, unseen)
    np.testing.assert_array_equal(out[is_unseen], best[is_unseen])
    np.testing.assert_array_equal(out[~is_unseen], labels[~is_unseen])


@pytest.mark.parametrize("ignore_as_negative", [True, False])
def test_per_image_loss_equals_the_batched_loss_and_its_gradient(ignore_as_negative):
    cfg = ml_collections.ConfigDict(
        dict(
            focal_weight=100.0,
            dice_weight=1.0,
            focal_alpha=0.25,
            focal_gamma=2.0,
            ignore_as_negative=ignore_as_negative,
            per_image=False,
        )
    )
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 5, 4, 4)), jnp.float32)
    labels = rng.integers(0, 5, (3, 16, 16))
    labels[0, :4] = 255  # some ignore pixels
    labels[2] = 1  # an image where most classes are absent
    labels = jnp.asarray(labels, jnp.int32)
    batched = losses.make_upsampled_loss(cfg)
    cfg.per_image = True
    per_image = losses.make_upsampled_loss(cfg)
    (value_b, aux_b), grad_b = jax.value_and_grad(batched, has_aux=True)(logits, labels)
    (value_p, aux_p), grad_p = jax.value_and_grad(per_image, has_aux=True)(logits, labels)
    np.testing.assert_allclose(value_p, value_b, rtol=1e-6)
    np.testing.assert_allclose(aux_p["num_masks"], aux_b["num_masks"])
    np.testing.assert_allclose(grad_p, grad_b, rtol=1e-5, atol=1e-7 * float(jnp.abs(grad_b).max()))
    # a per-image mean of per-image losses would differ: the masks are counted over the batch
    means = [batched(logits[i : i + 1], labels[i : i + 1])[0] for i in range(3)]
    assert abs(float(np.mean(means)) - float(value_b)) > 1e-4 * abs(float(value_b))


_SHARDED_LOSS = """
import jax, jax.numpy as jnp, ml_collections, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from zegot_jax.models import losses
cfg = ml_collections.ConfigDict(dict(focal_weight=100.0, dice_weight=1.0, focal_alpha=0.25,
                                     focal_gamma=2.0, ignore_as_negative=True, per_image=True))
sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), PartitionSpec("data"))
loss = jax.jit(jax.grad(lambda x, y: losses.make_upsampled_loss(cfg)(x, y)[0]),
               in_shardings=(sharding, sharding))
hlo = loss.lower(jnp.zeros((16, 3, 4, 4)), jnp.zeros((16, 16, 16), jnp.int32)).compile().as_text()
print("all-gathers:", hlo.count("all-gather"))
"""


def test_per_image_loss_stays_on_each_device_under_data_parallel_sharding():
    flags = os.environ.get("XLA_FLAGS", "")
    env = {**os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=8"}
    done = subprocess.run(
        [sys.executable, "-c", _SHARDED_LOSS], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "all-gathers: 0" in done.stdout, done.stdout  # a map over the global batch gathers


def _loss_config(num_points=0):
    return ml_collections.ConfigDict(
        dict(
            focal_weight=100.0,
            dice_weight=1.0,
            focal_alpha=0.25,
            focal_gamma=2.0,
            ignore_as_negative=True,
            per_image=False,
            num_points=num_points,
            point_oversample=3.0,
            point_importance=0.75,
        )
    )


def _logits_and_labels():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(2, 4, 3, 5)), jnp.float32)
    labels = rng.integers(0, 4, (2, 12, 10))
    labels[1, :3] = 255
    return logits, jnp.asarray(labels, jnp.int32)


def test_point_loss_with_every_pixel_centre_is_the_full_loss_and_gradient():
    logits, labels = _logits_and_labels()
    full = losses.make_upsampled_loss(_loss_config())
    points = losses.make_upsampled_loss(_loss_config(num_points=120))  # = 12 x 10 label pixels
    (value_f, _), grad_f = jax.value_and_grad(full, has_aux=True)(logits, labels)
    (value_p, _), grad_p = jax.value_and_grad(points, has_aux=True)(logits, labels)
    np.testing.assert_allclose(value_p, value_f, rtol=1e-6)
    np.testing.assert_allclose(grad_p, grad_f, rtol=1e-5, atol=1e-7 * float(jnp.abs(grad_f).max()))


def test_fewer_points_sample_where_the_logits_are_uncertain():
    logits, labels = _logits_and_labels()
    loss = losses.make_upsampled_loss(_loss_config(num_points=40))
    with pytest.raises(ValueError, match="random key"):
        loss(logits, labels)
    a, b = (float(loss(logits, labels, jax.random.key(s))[0]) for s in (0, 1))
    assert np.isfinite(a) and a != b  # the key picks the points
    # Importance 1: every point is among the most uncertain of 3x as many candidates.
    points = losses.importance_points(jax.random.key(2), logits[0], 20, 3.0, 1.0)
    values = np.abs(np.asarray(losses.point_sample(logits[0], points))).min(0)
    candidates = jax.random.uniform(jax.random.split(jax.random.key(2))[0], (60, 2))
    others = np.abs(np.asarray(losses.point_sample(logits[0], candidates))).min(0)
    assert values.max() <= np.sort(others)[19] + 1e-6
