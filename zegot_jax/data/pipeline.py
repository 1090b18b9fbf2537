"""grain input pipelines over any random-access source (a TFDS data_source or a list of dicts).

A source has `len(source)` and `source[i] -> {'image': uint8 [H, W, 3] or JPEG/PNG bytes,
'label': uint8 [H, W] or PNG bytes}` (train ids, 255 ignore). Both iterators yield numpy batches
for this process only; `zegot_jax.sharding.to_global` turns them into sharded `jax.Array`s.

Determinism: every random choice for the i-th example of a process's stream comes from a generator
seeded by seed + i, so the stream of examples depends on the seed and the process's shard only.
grain's workers each batch every W-th example, so with W > 1 workers the same examples are grouped
into batches differently: fix `num_workers` too to reproduce batches exactly (resuming requires
the same worker count). The
training iterator's position is `it.get_state()` (JSON bytes) and `it.set_state(state)`; orbax can
save it with `grain.python.PyGrainCheckpointSave(it)` / `PyGrainCheckpointRestore(it)` under the
`grain.python.PyGrainCheckpointHandler`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import grain.python as grain
import jax
import numpy as np
from absl import flags

from zegot_jax import storage
from zegot_jax.data import transforms as T


def _ensure_absl_flags() -> None:
    """grain's worker processes read absl flags; mark them parsed when no absl app did it."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class IndexedSource:
    """Wraps a source so each record also carries its index (for error messages)."""

    def __init__(self, source: Any):
        self._source = source

    def __repr__(self) -> str:
        # grain stores and compares this in checkpoints: keep it short and stable.
        source = self._source
        if isinstance(source, list | tuple):
            return f"IndexedSource({type(source).__name__}, len={len(source)})"
        text = repr(source)
        if len(text) > 500 or " at 0x" in text:
            text = f"{type(source).__module__}.{type(source).__qualname__}, len={len(source)}"
        return f"IndexedSource({text})"

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = dict(self._source[int(index)])
        record["_index"] = int(index)
        return record


def _describe(record: dict[str, Any]) -> str:
    name = record.get("file_name", b"")
    name = name.decode() if isinstance(name, bytes) else str(name)
    return f"record {record.get('_index', '?')}" + (f" ({name})" if name else "")


def _decode(record: dict[str, Any], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    where = _describe(record)
    image = T.decode_image(record["image"], where)
    label = T.decode_label(record["label"], where)
    if image.shape[:2] != label.shape:
        raise ValueError(f"{where}: image {image.shape[:2]} and label {label.shape} differ.")
    T.check_label(label, num_classes, where)
    return image, label


class TrainTransform(grain.RandomMapTransform):
    """Decode, rescale, crop (cat-max-ratio), flip, distort, remap labels, normalise, pad."""

    def __init__(
        self,
        *,
        crop_size: tuple[int, int],
        num_classes: int,
        lut: np.ndarray,
        base_scale: tuple[int, int],
        ratio_range: tuple[float, float],
        cat_max_ratio: float,
        flip_prob: float,
        photometric: bool,
        normalize: bool,
    ):
        self.crop_size, self.num_classes, self.lut = crop_size, num_classes, lut
        self.base_scale, self.ratio_range, self.cat_max_ratio = base_scale, ratio_range, cat_max_ratio
        self.flip_prob, self.photometric, self.normalize = flip_prob, photometric, normalize

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """One record as `{'image': [h, w, 3], 'label': int32 [h, w]}` at the crop size."""
        image, label = _decode(element, self.num_classes)
        size = T.random_rescale_size(*label.shape, rng, self.base_scale, self.ratio_range)
        label = T.resize(label, size, nearest=True)
        box = T.random_crop_box(label, self.crop_size, rng, self.cat_max_ratio)
        image = T.resize_crop(image, size, box)
        y0, x0, ch, cw = box
        label = cv2.LUT(np.ascontiguousarray(label[y0 : y0 + ch, x0 : x0 + cw]), self.lut)
        if rng.random() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.photometric:
            image = T.photometric_distortion(np.ascontiguousarray(image), rng)
        if self.normalize:
            image = T.normalize(image)
        image = T.pad_to(image, self.crop_size, T.pad_value(self.normalize))
        label = T.pad_to(label, self.crop_size, T.IGNORE)
        return {"image": image, "label": label.astype(np.int32)}


class EvalTransform(grain.MapTransform):
    """Decode; resize the image keeping its aspect (mmseg test scale); keep the label as is."""

    def __init__(self, *, num_classes: int | None, scale: tuple[int, int], normalize: bool):
        self.num_classes, self.scale, self.normalize = num_classes, scale, normalize

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        """One record as `{'image', 'label', 'valid'}`; a padding marker gives `valid=False`."""
        if element.get("_padding"):
            image = np.zeros((1, 1, 3), np.float32 if self.normalize else np.uint8)
            return {"image": image, "label": np.full((1, 1), T.IGNORE, np.int32), "valid": False}
        image, label = _decode(element, self.num_classes or T.IGNORE)
        image = T.resize(image, T.rescale_size(*label.shape, self.scale), nearest=False)
        if self.normalize:
            image = T.normalize(image)
        return {"image": image, "label": label.astype(np.int32), "valid": True}


def _crop_tuple(crop_size: int | Sequence[int]) -> tuple[int, int]:
    crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    if len(crop) != 2 or min(crop) <= 0:
        raise ValueError(f"crop_size must be a positive int or (h, w); got {crop_size!r}.")
    return int(crop[0]), int(crop[1])


def train_iterator(
    source: Any,
    *,
    batch_size: int,
    crop_size: int | Sequence[int],
    seed: int,
    num_classes: int,
    label_mode: str = "inductive",
    unseen: Sequence[int] = (),
    base_size: tuple[int, int] = (2048, 512),
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    normalize: bool = True,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
    read_threads: int = 16,
    read_ahead: int = 500,
) -> grain.DatasetIterator:
    """Returns a shuffled training iterator over this process's slice of every global batch.

    The global stream is the same whatever the number of processes: one permutation of the source
    per epoch (seeded by `seed` and the epoch), every random choice of stream position i seeded by
    (seed, i), cut into global batches of `batch_size * process_count` examples; process p gets
    the p-th block of `batch_size` of each global batch, so assembling the processes' batches in
    process order gives exactly the single-process batch.

    Args:
        source: random-access source (see module docstring), full-space train ids.
        batch_size: examples per batch on this process (global batch / process count).
        crop_size: crop (h, w) or int; 512 (Context: 480).
        seed: fixes shuffling and every augmentation.
        num_classes: K of the dataset; labels outside 0..K-1 and 255 raise ValueError.
        label_mode: 'inductive' (seen classes renumbered 0..S-1 in index order, unseen -> 255),
            'transductive' (full-space ids; the train step pseudo-labels unseen pixels and must not
            read their ids) or 'supervised' (full-space ids).
        unseen: unseen class indices (class_names.UNSEEN[dataset]).
        base_size: mmseg augmentation: the rescale target is ratio x base_size, aspect kept.
        ratio_range: mmseg augmentation: the range the rescale ratio is drawn from.
        cat_max_ratio: mmseg augmentation: crops are redrawn while one class covers at least this
            share of them.
        flip_prob: mmseg augmentation: the probability of a horizontal flip.
        photometric: mmseg augmentation: apply the photometric distortion.
        normalize: True -> image float32 CLIP-normalised; False -> uint8 (normalise on device),
            padding with the mean colour.
        num_workers: decoding processes (0 = in this process); batches do not depend on it.
        process_index: this process's index; default `jax.process_index()`.
        process_count: the number of processes; default `jax.process_count()`.
        num_epochs: None repeats forever.
        read_threads: grain's `ReadOptions` threads.
        read_ahead: batches prefetched (grain's `ReadOptions`).

    Returns:
        Iterator of `{'image': float32|uint8 [B, h, w, 3], 'label': int32 [B, h, w]}` with
        `get_state()` and `set_state(state)` (a JSON-able dict).
    """
    crop = _crop_tuple(crop_size)
    lut = T.label_lut(label_mode, num_classes, unseen)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive; got {batch_size}.")
    if len(source) == 0:
        raise ValueError("The training source is empty.")
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    transform = TrainTransform(
        crop_size=crop,
        num_classes=num_classes,
        lut=lut,
        base_scale=tuple(base_size),
        ratio_range=tuple(ratio_range),
        cat_max_ratio=cat_max_ratio,
        flip_prob=flip_prob,
        photometric=photometric,
        normalize=normalize,
    )
    dataset = (
        grain.MapDataset.source(IndexedSource(source))
        .shuffle(seed=seed)
        .repeat(num_epochs)
        .random_map(transform, seed=seed)
        .batch(batch_size, drop_remainder=True)
    )[index::count]
    iterable = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_ahead)
    )
    if num_workers > 0:
        _ensure_absl_flags()
        iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(iterable)


class _EvalShard:
    """This process's contiguous slice of a source, padded to `length` with padding markers."""

    def __init__(self, source: Any, start: int, end: int, length: int):
        self._source, self._start, self._end, self._length = source, start, end, length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._start + index >= self._end:
            return {"_padding": True}
        return self._source[self._start + index]


def collate_eval(
    examples: Sequence[dict[str, Any]], pad_shape: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    """Stacks eval examples, padding images (with 0) and labels (with 255) to common shapes."""
    image_hw = np.array([e["image"].shape[:2] for e in examples], np.int32)
    label_hw = np.array([e["label"].shape for e in examples], np.int32)
    image_shape = tuple(pad_shape) if pad_shape else tuple(image_hw.max(0))
    if (image_hw > np.array(image_shape)).any():
        raise ValueError(f"Resized images {image_hw.tolist()} exceed pad_shape {image_shape}.")
    fill = T.pad_value(examples[0]["image"].dtype == np.float32)
    return {
        "image": np.stack([T.pad_to(e["image"], image_shape, fill) for e in examples]),
        "label": np.stack([T.pad_to(e["label"], tuple(label_hw.max(0)), T.IGNORE) for e in examples]),
        "image_size": image_hw,
        "label_size": label_hw,
        "valid": np.array([e["valid"] for e in examples]),
    }


def eval_iterator(
    source: Any,
    *,
    short_side: int = 512,
    long_side: int | None = None,
    batch_size: int | None = None,
    num_classes: int | None = None,
    max_images: int | None = None,
    normalize: bool = True,
    pad_shape: tuple[int, int] | None = None,
    num_workers: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One ordered pass over this process's contiguous slice of `source`, for scoring.

    Images are resized keeping their aspect to short side `short_side` (long side at most
    `long_side`, default 4 x short_side: mmseg's (2048, 512) test scale); labels keep their full
    resolution and full-space ids. Every process gets ceil(N' / processes) slots (N' = N or
    `max_images`); slots past its slice have `valid=False` and a 1x1 all-ignore label.

    Args:
        source: random-access source (see module docstring).
        short_side: the short side images are resized to.
        long_side: the longest the long side may be (default 4 x short_side).
        batch_size: None yields single examples `{'image': [H', W', 3], 'label': int32 [H, W],
            'valid': bool}`; an int yields batches padded to common shapes: `{'image':
            [b, Hp, Wp, 3] (zero padded, or `pad_shape`), 'label': int32 [b, Lh, Lw] (255
            padded), 'image_size': int32 [b, 2], 'label_size': int32 [b, 2], 'valid': bool [b]}`.
        num_classes: if given, labels with other ids than 0..K-1 and 255 raise ValueError.
        max_images: only the first `max_images` examples of `source` are read (None or 0: all).
        normalize: True -> image float32 CLIP-normalised; False -> uint8 (normalise on device).
        pad_shape: with `batch_size`, the `(Hp, Wp)` every batch's images are padded to (default:
            the largest in the batch); a larger resized image raises ValueError.
        num_workers: decoding processes (0 = in this process).
        shard_index: this process's slice; default jax.process_index().
        shard_count: the number of slices; default jax.process_count().
    """
    index = jax.process_index() if shard_index is None else shard_index
    count = jax.process_count() if shard_count is None else shard_count
    total = min(len(source), max_images) if max_images else len(source)
    start, end = index * total // count, (index + 1) * total // count
    length = -(-total // count)
    if batch_size:
        length = -(-length // batch_size) * batch_size
    shard = _EvalShard(IndexedSource(source), start, end, length)
    long_side = long_side or 4 * short_side
    transform = EvalTransform(num_classes=num_classes, scale=(long_side, short_side), normalize=normalize)
    dataset = grain.MapDataset.source(shard).map(transform)
    if batch_size:
        dataset = dataset.batch(batch_size, batch_fn=functools.partial(collate_eval, pad_shape=pad_shape))
    iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=8))
    if num_workers > 0:
        _ensure_absl_flags()
        iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(iterable)


SPLIT_ALIASES = {"eval": "validation", "val": "validation", "test": "validation"}


def check_prepared(dataset: str, data_dir: str | None = None) -> None:
    """Raises FileNotFoundError if `dataset` is not prepared in `data_dir` (None: TFDS's default).

    The error gives the `prepare` command that builds it; a gs:// `data_dir` is checked too.
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415 (slow import, only when reading TFDS)

    from zegot_jax.data.builders import BUILDERS  # noqa: PLC0415 (registers the builders)

    if dataset not in BUILDERS:
        raise ValueError(f"Unknown dataset {dataset!r}; choose one of {sorted(BUILDERS)}.")
    root = storage.normalise(data_dir or tfds.core.constants.DATA_DIR)
    storage.require_gcs(root)
    builder = BUILDERS[dataset]
    folder = storage.path(root) / builder.name / str(builder.VERSION)
    with storage.gcs_errors(root):
        prepared = storage.exists(folder / "dataset_info.json")
    if not prepared:
        raise FileNotFoundError(
            f"Dataset {dataset!r} is not prepared in {root} (no {folder}). Build it once with: "
            f"python -m zegot_jax.data.prepare --dataset={dataset} --manual_dir=<downloaded files> "
            f"--data_dir={root} (or point --config.data.data_dir at where it was built)."
        )


def tfds_source(dataset: str, split: str, data_dir: str | None = None) -> Any:
    """Opens a prepared dataset as a random-access source with undecoded image/label bytes.

    Args:
        dataset: 'voc', 'context', 'coco_stuff' or 'ade20k'.
        split: 'train' or 'validation' ('eval' and 'val' mean 'validation').
        data_dir: TFDS data directory (None: TFDS's default).
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415 (slow import, only when reading TFDS)

    from zegot_jax.data.builders import BUILDERS  # noqa: PLC0415 (registers the builders)

    check_prepared(dataset, data_dir)
    skip = tfds.decode.SkipDecoding()
    return tfds.data_source(
        BUILDERS[dataset].name,
        split=SPLIT_ALIASES.get(split, split),
        data_dir=data_dir,
        decoders={"image": skip, "label": skip},
    )
