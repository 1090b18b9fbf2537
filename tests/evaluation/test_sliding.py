"""Tests for zegot_jax.evaluation.sliding: window placement, padding and averaging."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zegot_jax.evaluation import sliding

K = 3


def _per_pixel(images):
    """A per-pixel 'model': `[b, h, w, 3] -> [b, K, h, w]`, so windows must not change it."""
    feats = jnp.stack([images[..., 0], images[..., 1] * images[..., 2], jnp.tanh(images.sum(-1))], axis=1)
    return feats


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize(
    "size, crop, stride",
    [
        ((37, 53), 16, 11),  # odd sizes, overlaps of different widths
        ((20, 45), (20, 16), (7, 13)),
        ((12, 9), 16, 8),  # smaller than the crop: padded
        ((16, 40), 16, 16),  # stride == crop: no overlap
    ],
)
def test_per_pixel_function_is_unchanged(size, crop, stride):
    images = _images((2, *size, 3))
    slide = jax.jit(lambda x: sliding.sliding_window(_per_pixel, x, crop=crop, stride=stride, num_classes=K))
    out = slide(images)
    assert out.shape == (2, K, *size)
    np.testing.assert_allclose(out, _per_pixel(images), rtol=1e-5, atol=1e-6)


def test_window_placement_like_mmseg():
    # H=37, crop 16, stride 11: (37 - 16 + 10) // 11 + 1 = 3 windows at 0, 11, 21 (last clamped).
    assert sliding.window_starts(37, 16, 11) == [0, 11, 21]
    assert sliding.window_starts(16, 16, 11) == [0]
    assert sliding.window_starts(9, 16, 8) == [0]
    assert sliding.window_starts(683, 512, 426) == [0, 171]
    counts = sliding.window_counts((37, 5), (16, 5), (11, 5))
    expected_rows = np.zeros(37, int)
    for start in (0, 11, 21):
        expected_rows[start : start + 16] += 1
    np.testing.assert_array_equal(counts, np.repeat(expected_rows[:, None], 5, 1))
    assert counts.min() == 1 and counts.max() == 2


def test_overlaps_are_averaged_by_counts():
    calls = []

    def ones(crops):
        calls.append(crops.shape)
        return jnp.ones((crops.shape[0], K, *crops.shape[1:3]))

    # fn returns 1 everywhere; a window-index-dependent fn checks the average per pixel.
    out = sliding.sliding_window(ones, _images((1, 37, 30, 3)), crop=16, stride=11, num_classes=K)
    np.testing.assert_allclose(out, 1.0)
    assert calls == [(9, 16, 16, 3)]  # 3 x 3 windows, one call

    def window_id(crops):
        ids = jnp.arange(crops.shape[0], dtype=jnp.float32)
        return jnp.broadcast_to(ids[:, None, None, None], (crops.shape[0], K, 16, 16))

    out = sliding.sliding_window(window_id, _images((1, 16, 27, 3)), crop=16, stride=11, num_classes=K)
    # windows along W start at 0 and 11: pixel columns 11..15 average ids 0 and 1.
    np.testing.assert_allclose(out[0, 0, 0, :11], 0.0)
    np.testing.assert_allclose(out[0, 0, 0, 11:16], 0.5)
    np.testing.assert_allclose(out[0, 0, 0, 16:], 1.0)


def test_bad_arguments():
    images = _images((1, 20, 20, 3))
    with pytest.raises(ValueError, match="stride"):
        sliding.sliding_window(_per_pixel, images, crop=8, stride=9, num_classes=K)
    with pytest.raises(ValueError, match="crop"):
        sliding.sliding_window(_per_pixel, images, crop=0, stride=1, num_classes=K)
    with pytest.raises(ValueError, match="expected"):
        sliding.sliding_window(_per_pixel, images, crop=8, stride=8, num_classes=K + 1)
