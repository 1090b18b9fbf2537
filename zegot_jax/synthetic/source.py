"""The synthetic world as a random-access data source (what the grain pipeline reads)."""

from __future__ import annotations

from zegot_jax.synthetic import world


class SyntheticSource:
    """`num_images` rendered items of one split, addressable by index.

    Items are rendered on access (about 1,500 per second per core at 64 px) and are the same on
    every access, in every process and order.

    Args:
        split: 'pretrain', 'train', 'validation' or 'test' (disjoint random streams).
        size: image side in pixels (>= 8).
        num_images: length of the source.
        seed: world seed.

    Item `i` is `{'image': uint8 [size, size, 3], 'label': uint8 [size, size] class ids in
    [0, len(CLASS_NAMES)), 'caption': str}`; every pixel is labelled (no 255 in the raw labels).
    """

    class_names = world.CLASS_NAMES
    unseen = world.UNSEEN

    def __init__(self, split: str = "train", size: int = 64, num_images: int = 10_000, seed: int = 0):
        if split not in world.SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {sorted(world.SPLITS)}")
        if size < 8:
            raise ValueError(f"size must be >= 8 pixels, got {size}")
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.split, self.size, self.num_images, self.seed = split, size, num_images, seed

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for a source of {self.num_images}")
        return world.render(self.seed, self.split, index, self.size)

    def __repr__(self) -> str:
        return (
            f"SyntheticSource(split={self.split!r}, size={self.size}, "
            f"num_images={self.num_images}, seed={self.seed})"
        )
