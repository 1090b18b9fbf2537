"""COCO-Stuff 164K, 171 classes (182 raw ids -> 171, 255 ignore)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zegot_jax.data import class_names
from zegot_jax.data.builders import base

_INSTRUCTIONS = """\
Download into manual_dir (archives or extracted trees):
  train2017.zip, val2017.zip           (COCO 2017 images, images.cocodataset.org/zips/)
  stuffthingmaps_trainval2017.zip      (COCO-Stuff label maps, github.com/nightrome/cocostuff)
Layout (mmsegmentation's):
  manual_dir/images/{train2017,val2017}/*.jpg
  manual_dir/annotations/{train2017,val2017}/*.png   (grey PNGs: ids 0..181, 255 unlabelled)
The zips are extracted into images/ and annotations/ respectively when the trees are missing.
mmsegmentation's converted '*_labelTrainIds.png' (0..170, 255) are used when the raw PNG is absent.
Counts: train 118,287, validation 5,000."""

# 0-based COCO ids (0..90 things, 91..181 stuff) that COCO never uses; the other 171 are classes.
UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def _lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)
    used = [i for i in range(182) if i not in UNUSED_IDS]
    lut[used] = np.arange(len(used))
    lut[list(UNUSED_IDS)] = base.IGNORE
    lut[255] = base.IGNORE
    return lut


def _train_id_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)
    lut[:171] = np.arange(171)
    lut[255] = base.IGNORE
    return lut


RAW_LUT = _lut()
_TRAIN_ID_LUT = _train_id_lut()


class ZegotCocoStuff171(base.SegmentationBuilder):
    """COCO-Stuff 164K with 171 classes (80 things + 91 stuff)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
    CLASS_NAMES = class_names.COCO_STUFF171
    EXPECTED_COUNTS = {"train": (118287,), "validation": (5000,)}
    ARCHIVES = (
        base.Archive("train2017.zip", "images/train2017", into="images"),
        base.Archive("val2017.zip", "images/val2017", into="images"),
        base.Archive("stuffthingmaps_trainval2017.zip", "annotations/val2017", into="annotations"),
    )
    DESCRIPTION = "COCO-Stuff 164K, 171 classes, 255 ignore."
    HOMEPAGE = "https://github.com/nightrome/cocostuff"

    def _list_split(self, root: Path, split: str) -> tuple[list[base.Item], list[str]]:
        folder = "train2017" if split == "train" else "val2017"
        images = base.require_dir(root / "images" / folder, "COCO images", _INSTRUCTIONS)
        labels = base.require_dir(root / "annotations" / folder, "COCO-Stuff label maps", _INSTRUCTIONS)
        items, missing = [], []
        for image in sorted(images.glob("*.jpg")):
            raw = labels / f"{image.stem}.png"
            converted = labels / f"{image.stem}_labelTrainIds.png"
            label = raw if raw.is_file() else converted if converted.is_file() else None
            if label is None:
                missing.append(str(raw))
            else:
                items.append(base.Item(image.stem, image, label))
        return items, missing

    def _train_ids(self, item: base.Item, size: tuple[int, int]) -> np.ndarray:
        lut = _TRAIN_ID_LUT if item.label.stem.endswith("_labelTrainIds") else RAW_LUT
        return base.apply_lut(base.read_label_image(item.label), lut, item.label)
