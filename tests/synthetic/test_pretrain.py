"""Contrastive pretraining of the synthetic CLIP: loss, training, caching, zero-shot measures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zegot_jax.experiments.zero_shot import (
    chance_iou,
    patch_ceiling_confusion,
    retrieval_top1,
    zero_shot_dense_miou,
)
from zegot_jax.synthetic import pretrain as P
from zegot_jax.synthetic import world
from zegot_jax.synthetic.source import SyntheticSource


def _config(steps=30, batch_size=32):
    c = P.default_pretrain_config("smoke")
    c.steps, c.batch_size = steps, batch_size
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One smoke pretraining through `pretrained_clip`, recording each call of `pretrain`."""
    cache = tmp_path_factory.mktemp("cache")
    calls = []
    original = P.pretrain

    def recording(config, **kw):
        calls.append(config.steps)
        clip, history = original(config, **kw)
        calls.append(history)
        return clip, history

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(P, "pretrain", recording)
        clip = P.pretrained_clip(_config(), cache_dir=cache, progress=False)
    return clip, calls, cache


def test_config_sizes_and_hash(monkeypatch, tmp_path):
    default, smoke = P.default_pretrain_config(), P.default_pretrain_config("smoke")
    assert (default.image_size, smoke.image_size) == (64, 32)
    assert P.clip_spec(default).grid_size == 8
    assert P.config_hash(default) == P.config_hash(P.default_pretrain_config())
    assert P.config_hash(default) != P.config_hash(smoke)
    monkeypatch.setenv("ZEGOT_CACHE", str(tmp_path))
    assert P.cache_path(smoke).parent == tmp_path
    assert P.cache_path(smoke, cache_dir="/x").parent.as_posix() == "/x"
    with pytest.raises(ValueError, match="smoke"):
        P.default_pretrain_config("large")


def test_contrastive_loss():
    x = jax.random.normal(jax.random.key(0), (8, 16))
    scale = jnp.log(100.0)
    assert float(P.contrastive_loss(x, x, scale)) < 0.05  # each row matches only itself
    random = P.contrastive_loss(x, jax.random.normal(jax.random.key(1), (8, 16)), jnp.zeros(()))
    np.testing.assert_allclose(float(random), np.log(8), atol=0.2)
    # Pairs 0 and 1 show the same content. One-hot targets reward pulling them apart; grouped
    # targets (one group for both) are best when they coincide.
    groups = jnp.array([0, 0, 1, 2, 3, 4, 5, 6])
    direction = jax.random.normal(jax.random.key(2), (16,))

    def loss(eps, g):
        y = x.at[1].set(x[0] + eps * direction)
        return float(P.contrastive_loss(y, y, jnp.log(10.0), g))

    assert loss(1.0, None) < loss(0.0, None) - 0.05
    assert loss(1.0, groups) > loss(0.0, groups) + 0.01


def test_make_batch_is_deterministic():
    c = _config(batch_size=4)
    a, b = P.make_batch(c, 3), P.make_batch(c, 3)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["images"].shape == (4, 32, 32, 3) and a["tokens"].shape == (4, 32)
    np.testing.assert_array_equal(a["images"][1], world.render(0, "pretrain", 13, 32)["image"])


def test_loss_decreases(trained):
    _, calls, _ = trained
    loss = np.asarray(calls[1]["loss"])
    assert len(loss) == 30 and np.isfinite(loss).all()
    assert loss[-5:].mean() < loss[:5].mean() - 0.5


def test_cache_is_written_loadable_and_reused(trained, monkeypatch):
    clip, calls, cache = trained
    path = P.cache_path(_config(), cache)
    assert path.is_file() and [p.name for p in cache.iterdir()] == [path.name]
    assert calls[0] == 30

    def fail(*a, **kw):
        raise AssertionError("pretrain ran although the cache holds the weights")

    monkeypatch.setattr(P, "pretrain", fail)
    again = P.pretrained_clip(_config(), cache_dir=cache, dtype=jnp.bfloat16)
    assert again.spec == clip.spec == P.clip_spec(_config())
    assert again.dtype == jnp.bfloat16  # compute dtype as asked; parameters stay float32
    for a, b in zip(
        jax.tree.leaves(nnx.state(clip, nnx.Param)), jax.tree.leaves(nnx.state(again, nnx.Param)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_pretraining_is_reproducible(trained):
    cached, calls, _ = trained
    again, history = P.pretrain(_config(), progress=False)  # same config: compiled step reused
    assert history["loss"] == calls[1]["loss"]
    for x, y in zip(
        jax.tree.leaves(nnx.state(cached, nnx.Param)),
        jax.tree.leaves(nnx.state(again, nnx.Param)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_zero_shot_measures(trained):
    clip, _, _ = trained
    source = SyntheticSource("test", 32, 32)
    z = zero_shot_dense_miou(clip, source, num_images=32, batch_size=16)
    assert 0 <= z["chance_miou"] < z["ceiling_miou"] <= 1
    assert set(z["per_class_iou"]) == set(world.CLASS_NAMES)
    assert 0 <= z["miou"] <= 1 and 0 <= z["miou_unseen"] <= 1
    r = retrieval_top1(clip, source, num_images=32)
    assert r["chance"] == 1 / 32 and r["content_top1"] >= r["top1"]


def test_chance_and_ceiling_closed_forms():
    counts = np.array([10, 30, 60])
    k = 3
    expected = (counts / k) / (counts + counts.sum() / k - counts / k)
    np.testing.assert_allclose(chance_iou(counts), expected)
    labels = np.zeros((1, 8, 8), np.uint8)
    labels[:, :4, :4] = 1
    np.testing.assert_array_equal(patch_ceiling_confusion(labels, 4, 2), [[48, 0], [0, 16]])
    labels[:, 0, 4] = 1  # one pixel a patch cannot resolve
    np.testing.assert_array_equal(patch_ceiling_confusion(labels, 4, 2), [[47, 0], [1, 16]])
