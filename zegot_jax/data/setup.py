"""What the loop needs from a dataset: class names, splits, label mode, and the two iterators.

`data.source` picks where examples come from: 'tfds' (a prepared builder, read with
`tfds.data_source`), 'synthetic' (the laptop-scale world, generated on the fly) or 'random' (tiny
random images for smoke tests). All three go through the same grain pipeline.
"""

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

from zegot_jax.data import class_names as names_lib
from zegot_jax.data import pipeline

LABEL_MODES = ("inductive", "transductive", "supervised")  # data.label_mode
SOURCES = ("tfds", "synthetic", "random")  # data.source


class RandomSource:
    """Random images and blob-shaped labels of `num_classes` classes (smoke tests only)."""

    def __init__(self, num_classes: int, size: int, num_images: int, seed: int):
        self.num_classes, self.size, self.num_images, self.seed = num_classes, size, num_images, seed

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, index))
        image = rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)
        coarse = rng.integers(0, self.num_classes, (4, 4)).astype(np.uint8)
        label = np.kron(coarse, np.ones((self.size // 4, self.size // 4), np.uint8))
        return {"image": image, "label": label}


@dataclasses.dataclass(frozen=True)
class DataSetup:
    """A dataset's vocabulary and protocol, and factories for its iterators."""

    config: ml_collections.ConfigDict
    class_names: tuple[str, ...]
    unseen: tuple[int, ...]

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "DataSetup":
        """Reads `data.name`, `data.source` and `data.label_mode`, failing clearly on typos."""
        data = config.data
        if data.label_mode not in LABEL_MODES:
            raise ValueError(f"data.label_mode={data.label_mode!r}: use one of {LABEL_MODES}.")
        if data.source not in SOURCES:
            raise ValueError(f"data.source={data.source!r}: use one of {SOURCES}.")
        if data.name == "synthetic" or data.source == "synthetic":
            from zegot_jax.synthetic import world  # noqa: PLC0415

            unseen = config.synthetic.unseen if "synthetic" in config else world.DEFAULT_UNSEEN
            return cls(config, tuple(world.CLASS_NAMES), world.class_ids(unseen))
        if data.name not in names_lib.DATASETS:
            raise ValueError(
                f"data.name={data.name!r} is not a known dataset; known: "
                f"{sorted(names_lib.DATASETS)} and 'synthetic'."
            )
        names, unseen = names_lib.DATASETS[data.name]
        return cls(config, tuple(names), tuple(unseen))

    @property
    def seen(self) -> tuple[int, ...]:
        """Ids of the seen classes (every class not in `unseen`), in order."""
        return tuple(i for i in range(len(self.class_names)) if i not in set(self.unseen))

    @property
    def train_classes(self) -> tuple[str, ...]:
        """Classes in play while training: the seen ones (inductive) or all of them."""
        if self.config.data.label_mode == "inductive":
            return tuple(self.class_names[i] for i in self.seen)
        return self.class_names

    @property
    def pseudo_label_ids(self) -> tuple[int, ...]:
        """Unseen ids whose pixels get pseudo-labels (transductive self-training only)."""
        return self.unseen if self.config.data.label_mode == "transductive" else ()

    def seen_penalty(self, config: ml_collections.ConfigDict) -> float:
        """The seen-class calibration applies to models trained inductively."""
        return config.eval.seen_penalty if config.data.label_mode == "inductive" else 0.0

    def source(self, split: str) -> Sequence[dict[str, Any]]:
        """The random-access source of `split` ('train' or 'eval')."""
        data = self.config.data
        if data.source == "random":
            size = data.crop_size * 2 if split == "train" else data.eval_short_side
            return RandomSource(len(self.class_names), size, 16, self.config.seed + (split == "eval"))
        if data.source == "synthetic" or data.name == "synthetic":
            from zegot_jax.synthetic.source import SyntheticSource  # noqa: PLC0415

            syn = self.config.synthetic
            if split == "train":
                return SyntheticSource("train", syn.image_size, syn.train_images, syn.world_seed)
            return SyntheticSource("test", syn.image_size, syn.eval_images, syn.world_seed)
        return pipeline.tfds_source(data.name, split, data_dir=data.data_dir or None)

    def check_available(self, splits: Sequence[str] = ("train", "eval")) -> None:
        """Raises FileNotFoundError if a TFDS dataset is not prepared; creates nothing.

        The error gives the `prepare` command to run.
        """
        data = self.config.data
        if data.source == "tfds" and data.name != "synthetic" and splits:
            pipeline.check_prepared(data.name, data.data_dir or None)

    def train_iterator(self, local_batch_size: int, *, seed: int) -> Iterator[dict[str, np.ndarray]]:
        """This process's shard of the training stream (has `get_state`/`set_state`)."""
        data = self.config.data
        return pipeline.train_iterator(
            self.source("train"),
            batch_size=local_batch_size,
            crop_size=data.crop_size,
            base_size=tuple(data.base_size),
            ratio_range=tuple(data.ratio_range),
            cat_max_ratio=data.cat_max_ratio,
            seed=seed,
            label_mode=data.label_mode,
            unseen=self.unseen,
            num_classes=len(self.class_names),
            num_workers=data.num_workers,
            read_threads=data.read_threads,
            read_ahead=data.read_ahead,
        )

    def eval_iterator(self) -> Iterator[dict[str, np.ndarray]]:
        """Evaluation examples, one image at a time, with the full-resolution label."""
        data = self.config.data
        return pipeline.eval_iterator(
            self.source("eval"),
            short_side=data.eval_short_side,
            num_classes=len(self.class_names),
            max_images=data.eval_max_images or None,
        )
