"""Tests for zegot_jax.models.losses against a NumPy reference written mask by mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zegot_jax.models.losses import segmentation_loss, text_consistency_loss


def _reference(
    logits,
    labels,
    *,
    focal_weight=100.0,
    dice_weight=1.0,
    alpha=0.25,
    gamma=2.0,
    ignore_index=255,
    ignore_as_negative=True,
):
    """Straightforward float64 NumPy version of the normalisation in the module docstring."""
    b, k = logits.shape[:2]
    focal_sum, dice_sum, num_masks = 0.0, 0.0, 0
    for i in range(b):
        y = labels[i].ravel()
        keep = np.ones(y.shape, bool) if ignore_as_negative else y != ignore_index
        for c in range(k):
            x = logits[i, c].ravel().astype(np.float64)
            t = (y == c).astype(np.float64)
            p = 1.0 / (1.0 + np.exp(-x))
            bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
            p_t = p * t + (1 - p) * (1 - t)
            alpha_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1.0
            fl = alpha_t * (1 - p_t) ** gamma * bce
            focal_sum += fl[keep].sum() / max(keep.sum(), 1)
            if t.sum() > 0:
                num_masks += 1
                dice = 1 - (2 * (p * t).sum() + 1) / (p[keep].sum() + t.sum() + 1)
                dice_sum += dice
    num_masks = max(num_masks, 1)
    focal, dice = focal_sum / num_masks, dice_sum / num_masks
    return focal_weight * focal + dice_weight * dice, focal, dice, num_masks


def _inputs(seed, b=2, k=5, h=6, w=7, ignore_fraction=0.2, absent=(1,)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (b, k, h, w)).astype(np.float32)
    present = [c for c in range(k) if c not in absent]
    labels = rng.choice(present, (b, h, w)).astype(np.int32)
    labels[rng.random((b, h, w)) < ignore_fraction] = 255
    return logits, labels


@pytest.mark.parametrize("ignore_as_negative", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_reference(seed, ignore_as_negative):
    logits, labels = _inputs(seed)
    labels[0, :, :] = np.where(labels[0] == 3, 255, labels[0])  # class 3 absent in image 0 only
    loss, aux = jax.jit(lambda x, y: segmentation_loss(x, y, ignore_as_negative=ignore_as_negative))(
        logits, labels
    )
    ref_loss, ref_focal, ref_dice, ref_masks = _reference(
        logits, labels, ignore_as_negative=ignore_as_negative
    )
    assert float(aux["num_masks"]) == ref_masks == 7  # 4 classes in image 1, 3 in image 0
    np.testing.assert_allclose(aux["focal"], ref_focal, rtol=1e-5)
    np.testing.assert_allclose(aux["dice"], ref_dice, rtol=1e-5)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)


def test_weights_and_focal_options():
    logits, labels = _inputs(2, k=3, absent=())
    kwargs = dict(focal_weight=3.0, dice_weight=0.5, alpha=-1.0, gamma=0.0)
    loss, aux = segmentation_loss(jnp.asarray(logits), jnp.asarray(labels), **kwargs)
    ref_loss, ref_focal, ref_dice, _ = _reference(logits, labels, **kwargs)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    # alpha < 0 and gamma 0 give plain BCE averaged over pixels, summed over masks.
    np.testing.assert_allclose(aux["focal"], ref_focal, rtol=1e-5)
    np.testing.assert_allclose(loss, 3.0 * aux["focal"] + 0.5 * aux["dice"], rtol=1e-6)


def test_ignore_pixels_only_matter_as_negatives():
    logits, labels = _inputs(3)
    mask = np.broadcast_to((labels == 255)[:, None], logits.shape)
    changed = np.where(mask, logits + 5.0, logits)
    base = segmentation_loss(jnp.asarray(logits), jnp.asarray(labels), ignore_as_negative=False)
    moved = segmentation_loss(jnp.asarray(changed), jnp.asarray(labels), ignore_as_negative=False)
    np.testing.assert_allclose(moved[0], base[0], rtol=1e-6)
    negative = segmentation_loss(jnp.asarray(changed), jnp.asarray(labels))
    assert float(negative[0]) > float(segmentation_loss(jnp.asarray(logits), jnp.asarray(labels))[0])


def test_all_ignore_batch_is_finite_with_one_mask_minimum():
    logits = np.random.default_rng(4).normal(size=(1, 3, 4, 4)).astype(np.float32)
    labels = np.full((1, 4, 4), 255, np.int32)
    loss, aux = segmentation_loss(jnp.asarray(logits), jnp.asarray(labels))
    assert float(aux["num_masks"]) == 1.0 and float(aux["dice"]) == 0.0
    np.testing.assert_allclose(loss, _reference(logits, labels)[0], rtol=1e-5)


@pytest.mark.parametrize("ignore_as_negative", [True, False])
def test_gradients_are_finite_for_extreme_logits(ignore_as_negative):
    logits, labels = _inputs(5)
    logits[0, 0] = 80.0
    logits[1, 2] = -80.0
    grad = jax.grad(
        lambda x: segmentation_loss(x, jnp.asarray(labels), ignore_as_negative=ignore_as_negative)[0]
    )(jnp.asarray(logits, jnp.bfloat16))
    assert grad.dtype == jnp.bfloat16
    grad = grad.astype(jnp.float32)
    assert bool(jnp.isfinite(grad).all()) and float(jnp.abs(grad).max()) > 0


def test_shape_errors():
    with pytest.raises(ValueError, match="labels"):
        segmentation_loss(jnp.zeros((1, 2, 4, 4)), jnp.zeros((1, 3, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"\[B,K,H,W\]"):
        segmentation_loss(jnp.zeros((2, 4, 4)), jnp.zeros((2, 4, 4), jnp.int32))


def test_text_consistency_loss_is_mean_cosine_distance_to_the_template_mean():
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    text = unit(rng.normal(size=(3, 4, 8))).astype(np.float32)
    reference = unit(rng.normal(size=(3, 2, 8))).astype(np.float32)
    ref = unit(reference.mean(1))
    expected = np.mean(1 - np.einsum("knd,kd->kn", text, ref))
    np.testing.assert_allclose(
        text_consistency_loss(jnp.asarray(text), jnp.asarray(reference)), expected, rtol=1e-5
    )
    same = np.repeat(ref[:, None], 4, axis=1)
    assert abs(float(text_consistency_loss(jnp.asarray(same), jnp.asarray(reference)))) < 1e-6
