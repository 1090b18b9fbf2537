"""Class lists and zero-shot splits as method.md section 4 states them."""

import pytest

from zegot_jax.data import class_names as cn


def test_sizes_and_uniqueness():
    for names, size in [(cn.VOC20, 20), (cn.CONTEXT59, 59), (cn.COCO_STUFF171, 171), (cn.ADE150, 150)]:
        assert len(names) == size
        assert len(set(names)) == size


def test_benchmark_spellings():
    assert {"pottedplant", "diningtable", "tvmonitor"} <= set(cn.VOC20)
    assert "tv monitor" in cn.CONTEXT59 and "tvmonitor" not in cn.CONTEXT59
    assert {"wall-concrete", "sky-other", "building-other", "playingfield"} <= set(cn.COCO_STUFF171)
    assert cn.COCO_STUFF171[:3] == ("person", "bicycle", "car")
    assert cn.COCO_STUFF171[79:81] == ("toothbrush", "banner")


@pytest.mark.parametrize(
    "dataset,names",
    [
        ("voc", ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]),
        (
            "context",
            [
                "aeroplane",
                "bird",
                "boat",
                "cat",
                "cow",
                "fence",
                "keyboard",
                "motorbike",
                "sofa",
                "tv monitor",
            ],
        ),
        (
            "coco_stuff",
            [
                "cow",
                "giraffe",
                "suitcase",
                "frisbee",
                "skateboard",
                "carrot",
                "scissors",
                "cardboard",
                "clouds",
                "grass",
                "playingfield",
                "river",
                "road",
                "tree",
                "wall-concrete",
            ],
        ),
    ],
)
def test_unseen_splits(dataset, names):
    all_names, unseen = cn.DATASETS[dataset]
    assert [all_names[i] for i in unseen] == names
    seen = cn.seen_indices(dataset)
    assert len(seen) + len(unseen) == len(all_names)
    assert not set(seen) & set(unseen) and list(seen) == sorted(seen)


def test_seen_counts_and_unknown():
    assert [len(cn.seen_indices(d)) for d in ("voc", "context", "coco_stuff")] == [15, 49, 156]
    assert cn.UNSEEN["ade20k"] == () and cn.seen_indices("ade20k") == tuple(range(150))
    with pytest.raises(ValueError, match="Unknown dataset"):
        cn.seen_indices("cityscapes")
