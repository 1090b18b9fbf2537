"""PASCAL VOC 2012 with the SBD augmented training set, 20 classes (background dropped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from zegot_jax.data import class_names
from zegot_jax.data.builders import base

_INSTRUCTIONS = """\
Download from the official sources into manual_dir (archives or their extracted trees):
  VOCtrainval_11-May-2012.tar  (PASCAL VOC 2012, host.robots.ox.ac.uk/pascal/VOC/voc2012)
  benchmark.tgz                (SBD, "Semantic Boundaries Dataset", the aug labels)
Layout (mmsegmentation's):
  manual_dir/VOCdevkit/VOC2012/JPEGImages/*.jpg
  manual_dir/VOCdevkit/VOC2012/SegmentationClass/*.png         (palette PNGs, 0 bg, 255 border)
  manual_dir/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
  manual_dir/VOCdevkit/VOCaug/dataset/cls/*.mat               (SBD GTcls.Segmentation)
  manual_dir/VOCdevkit/VOCaug/dataset/{train,val}.txt
benchmark.tgz extracted in place (manual_dir/benchmark_RELEASE/dataset/...) also works, and so do
converted aug labels in manual_dir/VOCdevkit/VOC2012/SegmentationClassAug/*.png (0..20, 255).
Splits: train = (SBD train + SBD val + VOC train) - VOC val = 10,582 images; validation = VOC val
= 1,449 images. Labels: VOC's own PNG where it exists, else the converted PNG, else SBD's .mat."""


def voc_palette() -> np.ndarray:
    """Returns the VOC colour map, uint8 `[256, 3]` (index -> RGB)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        code, rgb = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((code >> channel) & 1) << (7 - bit)
            code >>= 3
        palette[index] = rgb
    return palette


def _lut() -> np.ndarray:
    """Raw VOC ids (0 background, 1..20, 255 border) -> train ids (0..19, 255)."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[0] = base.IGNORE
    lut[1:21] = np.arange(20)
    lut[255] = base.IGNORE
    return lut


_LUT = _lut()


def rgb_to_index(rgb: np.ndarray, source: object) -> np.ndarray:
    """Maps a colour-coded VOC label `[H, W, 3]` to palette indices `[H, W]`."""
    palette = voc_palette().astype(np.int64)
    codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    table = {int(c): i for i, c in enumerate(codes[:21])}
    table[int(codes[255])] = 255
    pixels = rgb.astype(np.int64)
    flat = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    uniques, inverse = np.unique(flat, return_inverse=True)
    unknown = [hex(int(u)) for u in uniques if int(u) not in table]
    if unknown:
        raise ValueError(f"Label {source} has colours outside the VOC palette: {unknown[:10]}.")
    return np.array([table[int(u)] for u in uniques], dtype=np.uint8)[inverse].reshape(flat.shape)


class ZegotVocAug(base.SegmentationBuilder):
    """VOC 2012 + SBD aug, 20 classes; the zero-shot benchmark's VOC."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
    CLASS_NAMES = class_names.VOC20
    EXPECTED_COUNTS = {"train": (10582,), "validation": (1449,)}
    ARCHIVES = (
        base.Archive("VOCtrainval_11-May-2012.tar", "VOCdevkit/VOC2012"),
        base.Archive("benchmark.tgz", "benchmark_RELEASE/dataset"),
    )
    DESCRIPTION = "PASCAL VOC 2012 + SBD aug, 20 classes (background is ignore 255)."
    HOMEPAGE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"

    def _list_split(self, root: Path, split: str) -> tuple[list[base.Item], list[str]]:
        voc = base.require_dir(root / "VOCdevkit" / "VOC2012", "VOC 2012", _INSTRUCTIONS)
        lists = voc / "ImageSets" / "Segmentation"
        voc_val = base.read_list(lists / "val.txt", _INSTRUCTIONS)
        missing: list[str] = []
        if split == "validation":
            ids = sorted(voc_val)
        else:
            sbd = self._sbd_dir(root)
            sbd_ids: set[str] = set()
            if sbd is None:
                missing.append(f"{root / 'VOCdevkit/VOCaug/dataset'} (SBD, benchmark.tgz)")
            else:
                for name in ("train.txt", "val.txt"):
                    sbd_ids.update(base.read_list(sbd / name, _INSTRUCTIONS))
            voc_train = base.read_list(lists / "train.txt", _INSTRUCTIONS)
            ids = sorted((sbd_ids | set(voc_train)) - set(voc_val))
        items = []
        for image_id in ids:
            image = voc / "JPEGImages" / f"{image_id}.jpg"
            label = self._label_path(root, image_id)
            if not image.is_file():
                missing.append(str(image))
            elif label is None:
                missing.append(f"label of {image_id} (SegmentationClass/*.png or SBD cls/*.mat)")
            else:
                items.append(base.Item(image_id, image, label))
        return items, missing

    def _sbd_dir(self, root: Path) -> Path | None:
        for candidate in ("VOCdevkit/VOCaug/dataset", "benchmark_RELEASE/dataset"):
            if (root / candidate).is_dir():
                return root / candidate
        return None

    def _label_path(self, root: Path, image_id: str) -> Path | None:
        voc = root / "VOCdevkit" / "VOC2012"
        candidates = [
            voc / "SegmentationClass" / f"{image_id}.png",
            voc / "SegmentationClassAug" / f"{image_id}.png",
        ]
        sbd = self._sbd_dir(root)
        if sbd is not None:
            candidates.append(sbd / "cls" / f"{image_id}.mat")
        return next((c for c in candidates if c.is_file()), None)

    def _train_ids(self, item: base.Item, size: tuple[int, int]) -> np.ndarray:
        path: Path = item.label
        if path.suffix == ".mat":
            raw = read_sbd_mat(path)
        else:
            raw = base.read_label_image(path)
            if raw.ndim == 3:
                raw = rgb_to_index(raw, path)
        return base.apply_lut(raw, _LUT, path)


def read_sbd_mat(path: Path) -> np.ndarray:
    """Reads `GTcls.Segmentation` (class ids 0..20) from an SBD .mat file."""
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        return np.asarray(mat["GTcls"].Segmentation)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise ValueError(f"Cannot read GTcls.Segmentation from SBD file {path}: {e}.") from e
