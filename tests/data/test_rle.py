"""RLE decoding of PASCAL in Detail masks (no pycocotools needed at build time)."""

import numpy as np
import pytest

from zegot_jax.data import rle


def test_round_trip_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 30, 2)
        mask = rng.random((h, w)) < rng.random()
        assert (rle.decode(rle.encode(mask), h, w) == mask).all()


def test_matches_pycocotools():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = (rng.random((17, 23)) < 0.4).astype(np.uint8)
        ref = mask_api.encode(np.asfortranarray(mask))
        assert rle.encode(mask)["counts"] == ref["counts"].decode()
        assert (
            rle.decode({"size": ref["size"], "counts": ref["counts"].decode()}, 17, 23) == mask.astype(bool)
        ).all()


def test_uncompressed_counts_and_polygon():
    # Column-major: 2 zeros, 3 ones, 1 zero over a 3x2 image.
    mask = rle.decode({"size": [3, 2], "counts": [2, 3, 1]}, 3, 2)
    assert mask.tolist() == [[False, True], [False, True], [True, False]]
    square = rle.decode([[1, 1, 4, 1, 4, 4, 1, 4]], 6, 6)
    assert square[1:5, 1:5].all() and square.sum() == 16


def test_bad_rle_is_reported():
    with pytest.raises(ValueError, match="does not match the image size"):
        rle.decode({"size": [3, 3], "counts": [9]}, 3, 2)
    with pytest.raises(ValueError, match="runs sum to 5"):
        rle.decode({"size": [3, 2], "counts": [2, 3]}, 3, 2)
