"""PASCAL Context-59 (459 Detail categories -> 59 classes, everything else ignore)."""

from __future__ import annotations

import collections
import json
import logging
from pathlib import Path

import numpy as np

from zegot_jax.data import class_names, rle
from zegot_jax.data.builders import base

_INSTRUCTIONS = """\
Download into manual_dir (archives or extracted trees):
  VOCtrainval_03-May-2010.tar  (PASCAL VOC 2010, host.robots.ox.ac.uk/pascal/VOC/voc2010)
  trainval_merged.json         (PASCAL in Detail annotations, the file mmsegmentation links)
Layout (mmsegmentation's):
  manual_dir/VOCdevkit/VOC2010/JPEGImages/*.jpg
  manual_dir/VOCdevkit/VOC2010/trainval_merged.json   (manual_dir/trainval_merged.json also works)
Supported JSON (PASCAL in Detail): 'images': [{'image_id', 'file_name', 'height', 'width',
'phase': 'train'|'val'}], 'annos_segmentation': [{'image_id', 'category_id', 'segmentation':
COCO RLE {'size': [h, w], 'counts': str | [int]} or polygons}], 'categories': [{'category_id',
'name'}]; later annotations paint over earlier ones (the Detail API's getMask). The Detail API
itself is not needed. Instead of the JSON, labels converted by mmsegmentation also work:
  manual_dir/VOCdevkit/VOC2010/SegmentationClassContext/*.png   (0 background, 1..59)
  manual_dir/VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt
Counts: train 4,998 (4,996 in some converted lists), validation 5,105 (or 5,104)."""

# Detail category ids of the 59 classes, in the order of class_names.CONTEXT59.
DETAIL_IDS: tuple[int, ...] = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113,
    115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326,
    347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip
_TO_TRAIN_ID = {category: index for index, category in enumerate(DETAIL_IDS)}


def _png_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)
    lut[0] = base.IGNORE
    lut[1:60] = np.arange(59)
    lut[255] = base.IGNORE
    return lut


_PNG_LUT = _png_lut()


def _normalise(name: str) -> str:
    return name.replace(" ", "").replace("_", "").lower()


def mask_from_annotations(annotations: list[dict], height: int, width: int, source: object) -> np.ndarray:
    """Paints Detail annotations (in order) into uint8 train ids `[height, width]`."""
    label = np.full((height, width), base.IGNORE, dtype=np.uint8)
    for annotation in annotations:
        try:
            mask = rle.decode(annotation["segmentation"], height, width)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"Bad segmentation for {source}: {e}.") from e
        label[mask] = _TO_TRAIN_ID.get(int(annotation["category_id"]), base.IGNORE)
    return label


class ZegotContext59(base.SegmentationBuilder):
    """PASCAL Context with the 59 most frequent classes; other pixels are ignore (255)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
    CLASS_NAMES = class_names.CONTEXT59
    EXPECTED_COUNTS = {"train": (4996, 4998), "validation": (5104, 5105)}
    ARCHIVES = (base.Archive("VOCtrainval_03-May-2010.tar", "VOCdevkit/VOC2010"),)
    DESCRIPTION = "PASCAL Context-59 (VOC 2010 images, PASCAL in Detail labels), 255 ignore."
    HOMEPAGE = "https://cs.stanford.edu/~roozbeh/pascal-context/"

    def _list_split(self, root: Path, split: str) -> tuple[list[base.Item], list[str]]:
        voc = base.require_dir(root / "VOCdevkit" / "VOC2010", "VOC 2010", _INSTRUCTIONS)
        images = base.require_dir(voc / "JPEGImages", "VOC 2010 images", _INSTRUCTIONS)
        json_path = next(
            (p for p in (voc / "trainval_merged.json", root / "trainval_merged.json") if p.is_file()), None
        )
        if json_path is not None:
            return self._list_from_json(json_path, images, split)
        labels = base.require_dir(
            voc / "SegmentationClassContext", "Context labels (or trainval_merged.json)", _INSTRUCTIONS
        )
        list_name = "train.txt" if split == "train" else "val.txt"
        ids = base.read_list(voc / "ImageSets" / "SegmentationContext" / list_name, _INSTRUCTIONS)
        items, missing = [], []
        for image_id in sorted(ids):
            image, label = images / f"{image_id}.jpg", labels / f"{image_id}.png"
            found = [p for p in (image, label) if not p.is_file()]
            missing.extend(map(str, found))
            if not found:
                items.append(base.Item(image_id, image, label))
        return items, missing

    def _list_from_json(self, path: Path, images: Path, split: str) -> tuple[list[base.Item], list[str]]:
        data = self._load_json(path)
        phase = "train" if split == "train" else "val"
        by_image = collections.defaultdict(list)
        for annotation in data.get("annos_segmentation", []):
            by_image[annotation["image_id"]].append(annotation)
        items, missing = [], []
        records = sorted((r for r in data["images"] if r.get("phase") == phase), key=lambda r: r["file_name"])
        for record in records:
            image = images / record["file_name"]
            if not image.is_file():
                missing.append(str(image))
                continue
            items.append(
                base.Item(Path(record["file_name"]).stem, image, (path, by_image.get(record["image_id"], [])))
            )
        return items, missing

    def _load_json(self, path: Path) -> dict:
        cache = getattr(self, "_json_cache", None)
        if cache is not None and cache[0] == path:
            return cache[1]
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or "images" not in data:
                raise ValueError("no 'images' list")
        except (OSError, ValueError) as e:
            raise ValueError(f"Cannot read the Detail annotations {path}: {e}.") from e
        names = {c.get("category_id"): c.get("name", "") for c in data.get("categories", [])}
        odd = [
            (cid, names[cid], want)
            for cid, want in zip(DETAIL_IDS, self.CLASS_NAMES, strict=True)
            if cid in names and _normalise(names[cid]) != _normalise(want)
        ]
        if odd:
            logging.warning(
                "%s: category names differ from the expected ones (id, file, expected): %s", path, odd[:10]
            )
        self._json_cache = (path, data)
        return data

    def _train_ids(self, item: base.Item, size: tuple[int, int]) -> np.ndarray:
        if isinstance(item.label, Path):
            return base.apply_lut(base.read_label_image(item.label), _PNG_LUT, item.label)
        json_path, annotations = item.label
        return mask_from_annotations(annotations, *size, source=f"{item.image} in {json_path}")
