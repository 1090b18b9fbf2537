"""ADE20K-150 (SceneParsing / ADEChallengeData2016), validation only: cross-dataset evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zegot_jax.data import class_names
from zegot_jax.data.builders import base

_INSTRUCTIONS = """\
Download into manual_dir (archive or extracted tree):
  ADEChallengeData2016.zip     (MIT Scene Parsing benchmark, sceneparsing.csail.mit.edu)
Layout (mmsegmentation's):
  manual_dir/ADEChallengeData2016/images/validation/*.jpg
  manual_dir/ADEChallengeData2016/annotations/validation/*.png   (0 other, 1..150)
Only the validation split (2,000 images) is built: ADE20K serves cross-dataset evaluation here."""


def _lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)
    lut[0] = base.IGNORE
    lut[1:151] = np.arange(150)
    lut[255] = base.IGNORE
    return lut


_LUT = _lut()


class ZegotAde150(base.SegmentationBuilder):
    """ADE20K with 150 classes; 'other' (0) is ignore."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
    CLASS_NAMES = class_names.ADE150
    EXPECTED_COUNTS = {"validation": (2000,)}
    ARCHIVES = (base.Archive("ADEChallengeData2016.zip", "ADEChallengeData2016"),)
    DESCRIPTION = "ADE20K-150 validation (cross-dataset evaluation), 255 ignore."
    HOMEPAGE = "http://sceneparsing.csail.mit.edu/"

    def _list_split(self, root: Path, split: str) -> tuple[list[base.Item], list[str]]:
        ade = base.require_dir(root / "ADEChallengeData2016", "ADE20K", _INSTRUCTIONS)
        images = base.require_dir(ade / "images" / "validation", "ADE20K images", _INSTRUCTIONS)
        labels = base.require_dir(ade / "annotations" / "validation", "ADE20K labels", _INSTRUCTIONS)
        items, missing = [], []
        for image in sorted(images.glob("*.jpg")):
            label = labels / f"{image.stem}.png"
            if label.is_file():
                items.append(base.Item(image.stem, image, label))
            else:
                missing.append(str(label))
        return items, missing

    def _train_ids(self, item: base.Item, size: tuple[int, int]) -> np.ndarray:
        return base.apply_lut(base.read_label_image(item.label), _LUT, item.label)
