"""Per-example transforms: sizes, crop rule, label tables, distortion, decoding errors."""

import io

import numpy as np
import PIL.Image
import pytest

from zegot_jax.data import transforms as T


def test_rescale_sizes_follow_mmseg():
    assert T.rescale_size(375, 500, (2048, 512)) == (512, 683)  # short side 512
    assert T.rescale_size(100, 1000, (2048, 512)) == (205, 2048)  # long side capped
    rng = np.random.default_rng(0)
    assert T.random_rescale_size(375, 500, rng, (2048, 512), (1.0, 1.0)) == (512, 683)
    sizes = [T.random_rescale_size(375, 500, rng, (2048, 512), (0.5, 2.0)) for _ in range(50)]
    shorts = [min(s) for s in sizes]
    assert 256 <= min(shorts) < 400 and 800 < max(shorts) <= 1024


def test_label_lut_modes():
    unseen = (15, 16, 17, 18, 19)
    lut = T.label_lut("inductive", 20, unseen)
    assert lut[:15].tolist() == list(range(15))
    assert (lut[15:] == 255).all()
    lut = T.label_lut("inductive", 59, (0, 6))  # seen classes keep index order, renumbered
    assert lut[[0, 1, 5, 6, 7, 58]].tolist() == [255, 0, 4, 255, 5, 56]
    for mode in ("transductive", "supervised"):
        lut = T.label_lut(mode, 20, unseen)
        assert lut[:20].tolist() == list(range(20)) and (lut[20:] == 255).all()
    with pytest.raises(ValueError, match="label_mode"):
        T.label_lut("zero-shot", 20, unseen)
    with pytest.raises(ValueError, match="must lie in"):
        T.label_lut("inductive", 20, (20,))
    with pytest.raises(ValueError, match="needs the unseen"):
        T.label_lut("transductive", 20, ())


def test_crop_respects_category_max_ratio():
    label = np.ones((100, 100), np.uint8)
    label[:, 60:] = 2  # about half the crops mix the classes enough
    label[:, :10] = 255  # ignore is not counted
    for seed in range(10):
        y0, x0, h, w = T.random_crop_box(label, (50, 50), np.random.default_rng(seed), 0.75)
        assert (h, w) == (50, 50) and 0 <= y0 <= 50 and 0 <= x0 <= 50
        counts = np.bincount(label[y0 : y0 + h, x0 : x0 + w].ravel(), minlength=256)[:255]
        counts = counts[counts > 0]
        assert len(counts) > 1 and counts.max() / counts.sum() < 0.75
    # Impossible rule: still returns a valid box after the retries; crops clip to the image.
    assert T.random_crop_box(np.zeros((30, 20), np.uint8), (64, 64), np.random.default_rng(0)) == (
        0,
        0,
        30,
        20,
    )


def test_photometric_distortion():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    out_a = T.photometric_distortion(image, np.random.default_rng(7))
    out_b = T.photometric_distortion(image, np.random.default_rng(7))
    assert out_a.dtype == np.uint8 and out_a.shape == image.shape
    np.testing.assert_array_equal(out_a, out_b)
    changed = [
        not np.array_equal(T.photometric_distortion(image, np.random.default_rng(s)), image)
        for s in range(10)
    ]
    assert sum(changed) >= 8
    grey = np.repeat(rng.integers(0, 256, (16, 16, 1), dtype=np.uint8), 3, axis=2)
    for seed in range(10):  # saturation and hue leave grey pixels grey
        out = T.photometric_distortion(grey, np.random.default_rng(seed)).astype(int)
        assert np.abs(out[..., 0] - out[..., 1]).max() <= 1
        assert np.abs(out[..., 1] - out[..., 2]).max() <= 1


def test_normalize_and_pad():
    mean = np.round(T.CLIP_MEAN).astype(np.uint8)
    assert np.abs(T.normalize(mean[None, None])).max() < 0.01
    padded = T.pad_to(np.ones((2, 3), np.uint8), (4, 5), 255)
    assert padded.shape == (4, 5) and padded[:2, :3].all() and (padded[2:] == 255).all()
    assert (padded[:, 3:] == 255).all()


def test_decoding_and_label_checks():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    png = io.BytesIO()
    PIL.Image.fromarray(rgb).save(png, "PNG")
    np.testing.assert_array_equal(T.decode_image(png.getvalue()), rgb)
    with pytest.raises(ValueError, match="Cannot decode image rec 3"):
        T.decode_image(b"not an image", "rec 3")
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        T.decode_image(rgb.astype(np.float32))
    palette = PIL.Image.fromarray(np.array([[0, 5], [255, 1]], np.uint8), mode="P")
    palette.putpalette([0] * 768)
    buf = io.BytesIO()
    palette.save(buf, "PNG")
    assert T.decode_label(buf.getvalue()).tolist() == [[0, 5], [255, 1]]
    assert T.decode_label(np.zeros((3, 4, 1), np.uint8)).shape == (3, 4)
    T.check_label(np.array([[0, 19, 255]], np.uint8), 20)
    with pytest.raises(ValueError, match=r"ids \[20, 254\] outside 0..19"):
        T.check_label(np.array([[0, 20, 254, 255]], np.uint8), 20, "x")


def test_resize_crop_equals_resize_then_crop():
    rng = np.random.default_rng(0)
    image = np.kron(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))
    for size, box in [
        ((96, 128), (10, 20, 32, 40)),
        ((100, 133), (68, 93, 32, 40)),
        ((37, 50), (5, 3, 32, 40)),
        ((30, 40), (0, 0, 30, 40)),
    ]:
        y0, x0, h, w = box
        ref = T.resize(image, size, nearest=False)[y0 : y0 + h, x0 : x0 + w].astype(int)
        got = T.resize_crop(image, size, box)
        assert got.shape == ref.shape and np.abs(got - ref).max() <= 4
        assert np.abs(got - ref).mean() < 0.5
