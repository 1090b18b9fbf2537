"""Tiny fake copies of the four datasets in their real on-disk formats.

Each writer returns `{split: {key: expected train ids uint8 [H, W]}}`, computed here from the raw
ids with plain Python rules (not with the builders' tables), so the tests compare two derivations.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import scipy.io

from zegot_jax.data import rle

H, W = 24, 32  # small images; sizes vary per example through `_size`.


def _size(i: int) -> tuple[int, int]:
    return H + 2 * (i % 3), W - 2 * (i % 2)


def _blocks(rng: np.random.Generator, values: list[int], size: tuple[int, int]) -> np.ndarray:
    """Random ids in 4x4-pixel blocks (so nearest resizing keeps them meaningful)."""
    grid = rng.choice(values, size=(size[0] // 4 + 1, size[1] // 4 + 1))
    return np.kron(grid, np.ones((4, 4), dtype=grid.dtype))[: size[0], : size[1]]


def write_jpeg(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, "JPEG")


def write_grey_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(ids.astype(np.uint8), mode="L").save(path)


def write_palette_png(path: Path, ids: np.ndarray, palette: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = PIL.Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette(palette.reshape(-1).tolist())
    img.save(path)


def _voc_rule(raw: np.ndarray) -> np.ndarray:
    out = np.full(raw.shape, 255, np.uint8)
    keep = (raw >= 1) & (raw <= 20)
    out[keep] = raw[keep] - 1
    return out


def fake_voc(root: Path, palette: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """VOC 2012 (palette PNGs) + SBD (.mat GTcls.Segmentation), mmseg layout."""
    rng = np.random.default_rng(0)
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = root / "VOCdevkit" / "VOCaug" / "dataset"
    voc_train, voc_val, sbd_train, sbd_val = ["a0", "a1"], ["v0", "v1"], ["s0", "s1", "a1"], ["v1"]
    expected: dict[str, dict[str, np.ndarray]] = {"train": {}, "validation": {}}
    for i, image_id in enumerate(sorted(set(voc_train + voc_val + sbd_train + sbd_val))):
        size = _size(i)
        write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", size, i)
        split = "validation" if image_id in voc_val else "train"
        if image_id in voc_train + voc_val:  # VOC's own label wins over SBD.
            raw = _blocks(rng, list(range(21)) + [255], size)
            write_palette_png(voc / "SegmentationClass" / f"{image_id}.png", raw, palette)
        else:
            raw = _blocks(rng, list(range(21)), size)
        expected[split][image_id] = _voc_rule(raw)
        if image_id in sbd_train + sbd_val:
            sbd_raw = raw if image_id not in voc_train + voc_val else np.zeros(size, np.uint8)
            (sbd / "cls").mkdir(parents=True, exist_ok=True)
            scipy.io.savemat(
                sbd / "cls" / f"{image_id}.mat",
                {
                    "GTcls": {
                        "Segmentation": sbd_raw.astype(np.uint8),
                        "CategoriesPresent": np.unique(sbd_raw).astype(np.uint8),
                    }
                },
            )
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(voc_train) + "\n")
    (lists / "val.txt").write_text("\n".join(voc_val) + "\n")
    (sbd / "train.txt").write_text("\n".join(sbd_train) + "\n")
    (sbd / "val.txt").write_text("\n".join(sbd_val) + "\n")
    return expected


# A few Detail category ids: 2 aeroplane (0), 9 bag (1), 458 wood (58); 1 and 300 are not in 59.
_CONTEXT_IDS = {2: 0, 9: 1, 458: 58, 1: 255, 300: 255}


def fake_context(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """VOC 2010 images + trainval_merged.json (Detail format, RLE str/list and polygons)."""
    rng = np.random.default_rng(1)
    voc = root / "VOCdevkit" / "VOC2010"
    images, annotations = [], []
    expected: dict[str, dict[str, np.ndarray]] = {"train": {}, "validation": {}}
    for i in range(5):
        name, size = f"2008_00000{i}", _size(i)
        write_jpeg(voc / "JPEGImages" / f"{name}.jpg", size, 10 + i)
        phase = "train" if i < 3 else "val"
        images.append(
            {
                "image_id": 2008000000 + i,
                "file_name": f"{name}.jpg",
                "height": size[0],
                "width": size[1],
                "phase": phase,
            }
        )
        label = np.full(size, 255, np.uint8)
        for j, category in enumerate(_CONTEXT_IDS):
            mask = _blocks(rng, [0, 0, 1], size).astype(bool)
            segmentation = rle.encode(mask)
            if j == 1:  # uncompressed RLE: counts as a list of ints
                segmentation = {"size": list(size), "counts": _runs(mask)}
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": 2008000000 + i,
                    "category_id": category,
                    "segmentation": segmentation,
                }
            )
            label[mask] = _CONTEXT_IDS[category]
        box = [2.0, 2.0, 9.0, 2.0, 9.0, 9.0, 2.0, 9.0]  # polygon covering pixels 2..9
        annotations.append(
            {"id": len(annotations), "image_id": 2008000000 + i, "category_id": 9, "segmentation": [box]}
        )
        label[2:10, 2:10] = 1
        expected["train" if phase == "train" else "validation"][name] = label
    categories = [
        {"category_id": c, "name": n}
        for c, n in [(1, "accordion"), (2, "aeroplane"), (9, "bag"), (300, "other"), (458, "wood")]
    ]
    (voc / "trainval_merged.json").write_text(
        json.dumps({"images": images, "annos_segmentation": annotations, "categories": categories})
    )
    return expected


def _runs(mask: np.ndarray) -> list[int]:
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def fake_coco_stuff(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """COCO images + stuffthingmaps grey PNGs (0..181, 255)."""
    rng = np.random.default_rng(2)
    unused = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
    used = [i for i in range(182) if i not in unused]
    expected: dict[str, dict[str, np.ndarray]] = {"train": {}, "validation": {}}
    for i in range(5):
        split, folder = ("train", "train2017") if i < 3 else ("validation", "val2017")
        stem, size = f"{i:012d}", _size(i)
        write_jpeg(root / "images" / folder / f"{stem}.jpg", size, 20 + i)
        raw = _blocks(rng, [0, 19, 90, 91, 160, 181, 11, 255], size)
        write_grey_png(root / "annotations" / folder / f"{stem}.png", raw)
        out = np.full(size, 255, np.uint8)
        for value in np.unique(raw):
            if value in used:
                out[raw == value] = used.index(int(value))
        expected[split][stem] = out
    return expected


def fake_ade20k_zip(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """ADEChallengeData2016.zip (not extracted) with 3 validation images."""
    rng = np.random.default_rng(3)
    tree = root / "tree"
    expected: dict[str, dict[str, np.ndarray]] = {"validation": {}}
    for i in range(3):
        stem, size = f"ADE_val_{i:08d}", _size(i)
        write_jpeg(tree / "ADEChallengeData2016/images/validation" / f"{stem}.jpg", size, 30 + i)
        raw = _blocks(rng, [0, 1, 75, 150], size)
        write_grey_png(tree / "ADEChallengeData2016/annotations/validation" / f"{stem}.png", raw)
        expected["validation"][stem] = np.where(raw == 0, 255, raw - 1).astype(np.uint8)
    with zipfile.ZipFile(root / "ADEChallengeData2016.zip", "w") as zf:
        for path in sorted(tree.rglob("*")):
            zf.write(path, path.relative_to(tree))
    for path in sorted(tree.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    tree.rmdir()
    return expected
