"""The synthetic world: determinism, pixel-exact masks, captions, class balance, the source."""

import re

import numpy as np
import pytest

from zegot_jax.synthetic import world
from zegot_jax.synthetic.source import SyntheticSource

K = len(world.CLASS_NAMES)


@pytest.fixture(scope="module")
def items():
    return [world.render(7, "test", i, 64) for i in range(240)]


def _edges(label):
    """Pixels with a 4-neighbour of another class `[H, W]` bool."""
    e = np.zeros(label.shape, bool)
    dy, dx = label[1:] != label[:-1], label[:, 1:] != label[:, :-1]
    e[1:] |= dy
    e[:-1] |= dy
    e[:, 1:] |= dx
    e[:, :-1] |= dx
    return e


def _nearest_palette(pixels):
    """Class whose palette holds the colour nearest to each pixel: `[N, 3]` -> `[N]`."""
    d = [np.linalg.norm(pixels[:, None] - np.float32(c.palette)[None], axis=-1).min(1) for c in world.CLASSES]
    return np.argmin(np.stack(d, 1), 1)


def test_class_table():
    assert K >= 24
    assert len(set(world.CLASS_NAMES)) == K
    assert len(world.UNSEEN) >= K / 4
    assert {world.CLASSES[i].stuff for i in world.UNSEEN} == {True, False}
    assert sorted(world.SEEN + world.UNSEEN) == list(range(K))
    # No class name is a substring of another, so captions can be parsed word by word.
    for a in world.CLASS_NAMES:
        assert all(a == b or a not in b for b in world.CLASS_NAMES)
    assert world.class_colours().shape == (K, 3)


def test_unseen_split_by_name():
    assert world.class_ids(("egg", "tomato")) == (world.CLASS_NAMES.index("egg"), 0)
    assert world.UNSEEN == world.class_ids(world.DEFAULT_UNSEEN)
    with pytest.raises(ValueError, match="unknown classes"):
        world.class_ids(("tomatoes",))
    with pytest.raises(ValueError, match="repeats"):
        world.class_ids(("egg", "egg"))
    with pytest.raises(ValueError, match="every class"):
        world.class_ids(world.CLASS_NAMES)


def test_config_unseen_reaches_the_data_setup():
    from configs import synthetic
    from zegot_jax.data.setup import DataSetup

    config = synthetic.get_config()
    assert DataSetup.from_config(config).unseen == world.UNSEEN
    config.synthetic.unseen = ("cherry", "ice")
    data = DataSetup.from_config(config)
    assert [data.class_names[i] for i in data.unseen] == ["cherry", "ice"]
    assert "cherry" not in data.train_classes and "egg" in data.train_classes


def test_deterministic_per_seed_split_and_index():
    a = world.render(3, "train", 11, 32)
    b = world.render(3, "train", 11, 32)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    for other in (
        world.render(4, "train", 11, 32),
        world.render(3, "validation", 11, 32),
        world.render(3, "train", 12, 32),
    ):
        assert not np.array_equal(a["image"], other["image"])


def test_source_order_does_not_matter():
    src = SyntheticSource("train", size=32, num_images=20, seed=5)
    forward = [src[i] for i in range(20)]
    backward = [src[i] for i in reversed(range(20))][::-1]
    for f, b in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(f["image"], b["image"])
        np.testing.assert_array_equal(f["label"], b["label"])
        assert f["caption"] == b["caption"]
    fresh = SyntheticSource("train", size=32, num_images=1000, seed=5)
    np.testing.assert_array_equal(fresh[13]["image"], forward[13]["image"])


def test_item_types_and_shapes(items):
    it = items[0]
    assert it["image"].dtype == np.uint8 and it["image"].shape == (64, 64, 3)
    assert it["label"].dtype == np.uint8 and it["label"].shape == (64, 64)
    assert isinstance(it["caption"], str)
    assert max(int(x["label"].max()) for x in items) < K


def test_masks_are_pixel_exact(items):
    """Each pixel's colour is nearest to its own class palette, also on mask boundaries."""
    pixels = np.concatenate([x["image"].reshape(-1, 3) for x in items]).astype(np.float32)
    labels = np.concatenate([x["label"].ravel() for x in items])
    edges = np.concatenate([_edges(x["label"]).ravel() for x in items])
    pred = _nearest_palette(pixels)
    assert (pred == labels).mean() > 0.94
    assert (pred[edges] == labels[edges]).mean() > 0.93
    for k in range(K):
        assert (pred[labels == k] == k).mean() > 0.85, world.CLASS_NAMES[k]
    # A mask shifted by one pixel no longer matches the colours on boundaries.
    shifted = np.concatenate([np.roll(x["label"], 1, axis=1).ravel() for x in items])
    assert (pred[edges] == shifted[edges]).mean() < 0.85


def test_captions_name_exactly_the_classes_present(items):
    for it in items:
        words = re.findall(r"[a-z]+", it["caption"])
        named = [w for w in words if w in world.CLASS_NAMES]
        present = {world.CLASS_NAMES[i] for i in np.unique(it["label"])}
        assert sorted(named) == sorted(present), it["caption"]


def test_class_balance(items):
    counts = np.stack([np.bincount(x["label"].ravel(), minlength=K) for x in items])
    image_freq = (counts > 0).mean(0)
    pixel_freq = counts.sum(0) / counts.sum()
    assert image_freq.min() > 0.07, dict(zip(world.CLASS_NAMES, image_freq, strict=True))
    assert pixel_freq.min() > 0.004  # 16 things share the object pixels
    assert pixel_freq.max() < 0.3
    things_per_image = (counts[:, list(world.THINGS)] > 0).sum(1)
    assert 1.2 < things_per_image.mean() < 2.2
    assert things_per_image.max() == 3


def test_resolution_independent_layout():
    for i in range(5):
        big = world.render(0, "train", i, 64)["label"]
        small = world.render(0, "train", i, 32)["label"]
        assert (big[::2, ::2] == small).mean() > 0.9


def test_source_errors():
    src = SyntheticSource("validation", size=16, num_images=4)
    assert len(src) == 4
    np.testing.assert_array_equal(src[-1]["label"], src[3]["label"])
    with pytest.raises(IndexError):
        src[4]
    with pytest.raises(ValueError, match="unknown split"):
        SyntheticSource("val")
    with pytest.raises(ValueError, match="size"):
        SyntheticSource("train", size=4)
    with pytest.raises(ValueError, match="num_images"):
        SyntheticSource("train", num_images=0)
