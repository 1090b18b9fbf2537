"""Shared machinery of the segmentation TFDS builders (array_record, no TensorFlow).

Every builder reads the files a user downloaded from the official sources (archives or extracted
trees in `manual_dir`), converts the raw labels to train ids once (0..K-1, 255 = ignore), checks
image and label counts against the official ones and writes examples:
`{'image': JPEG bytes as downloaded, 'label': PNG [H, W, 1] of train ids, 'file_name': str}`.

TFDS writes into an `incomplete.*` directory and renames it only after every split succeeded, so a
failed build never leaves a dataset that looks complete.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import dataclasses
import io
import logging
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from tqdm import tqdm

IGNORE = 255
_MAX_LISTED = 20


@dataclasses.dataclass(frozen=True)
class Item:
    """One example to convert: a key, the image file and whatever locates its raw label."""

    key: str
    image: Path
    label: Any


@dataclasses.dataclass(frozen=True)
class Archive:
    """An official archive that may sit in `manual_dir` instead of its extracted tree.

    Attributes:
        name: File name in `manual_dir`, e.g. 'VOCtrainval_11-May-2012.tar'.
        creates: Path (relative to `manual_dir`) that exists once it is extracted.
        into: Directory (relative to `manual_dir`) to extract into.
    """

    name: str
    creates: str
    into: str = "."


def extract_missing(root: Path, archives: Sequence[Archive]) -> None:
    """Extracts each archive in `root` whose tree is missing (atomically, via a temp dir)."""
    for archive in archives:
        source = root / archive.name
        if (root / archive.creates).exists() or not source.is_file():
            continue
        into = root / archive.into
        into.mkdir(parents=True, exist_ok=True)
        tmp = into / f".extracting-{archive.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            if zipfile.is_zipfile(source):
                with zipfile.ZipFile(source) as zf:
                    for member in tqdm(zf.infolist(), desc=f"extract {archive.name}"):
                        zf.extract(member, tmp)
            else:
                with tarfile.open(source) as tf:
                    for member in tqdm(tf, desc=f"extract {archive.name}"):
                        tf.extract(member, tmp, filter="data")
        except (OSError, zipfile.BadZipFile, tarfile.TarError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ValueError(f"Cannot extract {source}: {e}. Re-download the archive.") from e
        for entry in tmp.iterdir():
            dest = into / entry.name
            if dest.exists():
                _merge_tree(entry, dest)
            else:
                entry.rename(dest)
        shutil.rmtree(tmp, ignore_errors=True)


def _merge_tree(src: Path, dest: Path) -> None:
    for entry in src.iterdir():
        target = dest / entry.name
        if entry.is_dir() and target.is_dir():
            _merge_tree(entry, target)
        elif not target.exists():
            entry.rename(target)


def require_dir(path: Path, what: str, instructions: str) -> Path:
    """Returns `path` or raises FileNotFoundError naming it and the expected layout."""
    if not path.is_dir():
        raise FileNotFoundError(f"Missing directory {path} ({what}).\n{instructions}")
    return path


def read_list(path: Path, instructions: str) -> list[str]:
    """Reads a split list (one id per line, first column)."""
    if not path.is_file():
        raise FileNotFoundError(f"Missing split list {path}.\n{instructions}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def check_image(path: Path) -> tuple[bytes, tuple[int, int]]:
    """Reads an image file, decodes it fully to prove it is intact; returns bytes and (H, W)."""
    try:
        data = path.read_bytes()
        with PIL.Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as e:
        raise ValueError(f"Corrupt or unreadable image {path}: {e}. Re-extract this file.") from e
    return data, (height, width)


def read_label_image(path: Path) -> np.ndarray:
    """Reads a label PNG as its stored values: palette indices or grey levels `[H, W]`."""
    try:
        with PIL.Image.open(path) as img:
            img.load()
            if img.mode in ("P", "L"):
                return np.asarray(img)
            if img.mode in ("I", "I;16", "I;16B"):
                return np.asarray(img).astype(np.int64)
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"Corrupt or unreadable label {path}: {e}.") from e


def apply_lut(raw: np.ndarray, lut: np.ndarray, source: object) -> np.ndarray:
    """Maps raw ids to train ids with `lut` (-1 marks an invalid id) and names bad files.

    Args:
        raw: integer `[H, W]` raw ids.
        lut: int `[N]` raw id -> train id in 0..254 or 255, or -1 if the raw id is invalid.
        source: the file the label came from (for error messages).

    Returns:
        uint8 `[H, W]` train ids.
    """
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise ValueError(f"Label {source} has shape {raw.shape}; expected a 2-D id map.")
    out_of_table = (raw < 0) | (raw >= len(lut))
    mapped = lut[np.where(out_of_table, 0, raw)]
    bad = out_of_table | (mapped < 0)
    if bad.any():
        values = np.unique(raw[bad])[:10].tolist()
        raise ValueError(f"Label {source} has ids out of range: {values}.")
    return mapped.astype(np.uint8)


def encode_png(label: np.ndarray) -> bytes:
    """PNG bytes of a uint8 `[H, W]` label map (one grey channel)."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(label, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def ordered_map(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int, window: int = 64
) -> Iterator[Any]:
    """Applies `fn` with a thread pool, in order, holding at most `window` results."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the four builders; subclasses list items and read raw labels.

    Args:
        allow_partial: build from an incomplete copy on purpose (tests, quick looks); the
            dataset's metadata then says `partial: True`.
        num_threads: threads that read, check and convert files (default: CPU count).
        **kwargs: forwarded to TFDS (`data_dir`, ...); `file_format` is 'array_record'.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Train ids 0..K-1, 255 ignore; JPEG bytes kept as downloaded."}
    CLASS_NAMES: tuple[str, ...] = ()
    EXPECTED_COUNTS: dict[str, tuple[int, ...]] = {}
    ARCHIVES: tuple[Archive, ...] = ()
    DESCRIPTION = ""
    HOMEPAGE = ""

    def __init__(self, *, allow_partial: bool = False, num_threads: int | None = None, **kwargs: Any):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self._allow_partial = allow_partial
        self._num_threads = num_threads or os.cpu_count() or 1

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
            metadata=tfds.core.MetadataDict(class_names=list(self.CLASS_NAMES), partial=False),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        try:
            root = Path(dl_manager.manual_dir)
        except AssertionError as e:
            raise FileNotFoundError(f"{e}") from e
        extract_missing(root, self.ARCHIVES)
        generators = {}
        for split in self.EXPECTED_COUNTS:
            items, missing = self._list_split(root, split)
            self._check_counts(split, items, missing)
            generators[split] = self._generate_examples(items, split)
        return generators

    def _check_counts(self, split: str, items: Sequence[Item], missing: Sequence[str]) -> None:
        expected = self.EXPECTED_COUNTS[split]
        if not missing and len(items) in expected:
            return
        message = (
            f"{self.name} {split}: found {len(items)} complete image/label pairs, the "
            f"official count is {' or '.join(map(str, expected))}; "
            f"{len(missing)} listed files are missing"
        )
        if missing:
            message += ":\n  " + "\n  ".join(missing[:_MAX_LISTED])
            if len(missing) > _MAX_LISTED:
                message += f"\n  ... and {len(missing) - _MAX_LISTED} more"
        if not self._allow_partial:
            raise ValueError(
                message + "\nComplete the download (see the layout in "
                "MANUAL_DOWNLOAD_INSTRUCTIONS) or pass allow_partial=True "
                "(--allow_partial) to build this subset on purpose."
            )
        if not items:
            raise ValueError(message + "\nNothing to build.")
        logging.warning("%s\nBuilding a partial dataset (allow_partial).", message)
        self.info.metadata["partial"] = True

    def _generate_examples(self, items: Sequence[Item], split: str) -> Iterator[tuple[str, dict]]:
        converted = ordered_map(self._convert, items, self._num_threads)
        yield from tqdm(converted, total=len(items), desc=f"{self.name} {split}", unit="img")

    def _convert(self, item: Item) -> tuple[str, dict[str, Any]]:
        image_bytes, size = check_image(item.image)
        label = self._train_ids(item, size)
        if label.shape != size:
            source = item.label if isinstance(item.label, Path) else item.image
            raise ValueError(
                f"Label of {item.image} has size {label.shape[::-1]} (W, H) but the "
                f"image is {size[::-1]}: {source}."
            )
        return item.key, {
            "image": image_bytes,
            "label": encode_png(label),
            "file_name": item.image.name,
        }

    @abc.abstractmethod
    def _list_split(self, root: Path, split: str) -> tuple[list[Item], list[str]]:
        """Returns the complete items of `split` and the paths of listed files that are missing."""

    @abc.abstractmethod
    def _train_ids(self, item: Item, size: tuple[int, int]) -> np.ndarray:
        """Reads the raw label of `item` and returns uint8 train ids `[H, W]` (255 ignore)."""
