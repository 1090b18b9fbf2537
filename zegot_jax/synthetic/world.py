"""A procedural zero-shot segmentation world: pictures of things on stuff, with exact masks.

Every image is one or two stuff regions (split by a wavy horizon) with zero to three things on top,
drawn with hard edges so that the label map is pixel-exact, plus a caption naming every class
present. Each class is identifiable from a single 8x8 patch by its colour or stuff texture: a small
CLIP learns those in minutes, while in trials it did not learn shapes or local patterns. Things also
have a characteristic shape, which a stronger model could use but need not.

Item `i` of a split depends only on `(seed, split, i)`: it is rendered from its own random stream,
so order, sharding and worker count never change the data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from zegot_jax.synthetic import painters as P


class ClassSpec(NamedTuple):
    """One class of the world.

    Attributes:
        name: the word the captions and prompts use.
        stuff: True for background regions, False for objects.
        colour: nominal RGB (0-255) of the class.
        palette: every colour the texture paints before illumination and noise `[P, 3]`.
        texture: painter `(grid, rng, base, footprint) -> [H, W, 3]`.
        shape: painter `(grid, rng, cy, cx, r, angle) -> Footprint` (None for stuff).
    """

    name: str
    stuff: bool
    colour: tuple[int, int, int]
    palette: tuple[tuple[int, int, int], ...]
    texture: Callable
    shape: Callable | None = None


def _thing(name, colour, shape, texture, extra=()):
    return ClassSpec(name, False, colour, (colour, *extra), texture, shape)


def _stuff(name, colour, texture, extra=()):
    return ClassSpec(name, True, colour, (colour, *extra), texture)


CLASSES: tuple[ClassSpec, ...] = (
    _thing("tomato", (205, 35, 30), P.disc, P.shaded),
    _thing("cherry", (122, 16, 36), P.disc, P.shaded),
    _thing("carrot", (240, 122, 22), P.wedge, P.ridged),
    _thing("lemon", (240, 212, 45), P.ellipse, P.shaded),
    _thing("lime", (138, 206, 48), P.ellipse, P.shaded),
    _thing("cucumber", (22, 70, 52), P.wedge, P.ridged),
    _thing("mint", (40, 172, 160), P.blob, P.shaded),
    _thing("blueberry", (68, 56, 192), P.cluster, P.shaded),
    _thing("grape", (112, 40, 142), P.cluster, P.shaded),
    _thing("plum", (198, 40, 158), P.disc, P.shaded),
    _thing("donut", (242, 132, 186), P.ring, P.shaded),
    _thing("cookie", (172, 112, 58), P.disc, P.speckled, extra=((69, 28, 7),)),
    _thing("salmon", (250, 128, 114), P.blob, P.shaded),
    _thing("tire", (32, 32, 34), P.ring, P.treaded, extra=((60, 60, 62),)),
    _thing("rock", (128, 126, 122), P.blob, functools.partial(P.grainy, amount=8.0)),
    _thing("egg", (250, 244, 226), P.ellipse, P.shaded),
    _stuff("sky", (118, 178, 238), P.gradient_sky),
    _stuff("grass", (52, 138, 40), P.blades),
    _stuff("sand", (218, 192, 140), P.speckles),
    _stuff("water", (24, 62, 146), P.waves, extra=((59, 107, 191),)),
    _stuff("snow", (242, 246, 252), P.mottled, extra=((228, 236, 249),)),
    _stuff("road", (78, 82, 98), P.speckles),
    _stuff("mud", (112, 78, 46), P.mottled, extra=((98, 68, 43),)),
    _stuff("ice", (172, 214, 236), P.mottled, extra=((158, 204, 233),)),
)
"""The world's classes; the class id is the index. Colours sit around the hue circle at two
brightness levels, so every unseen class has seen neighbours sharing its hue, its texture or its
kind (thing or stuff)."""

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
DEFAULT_UNSEEN: tuple[str, ...] = ("grape", "cookie", "lime", "egg", "water", "mud")
"""Classes never labelled in segmentation training by default (four things, two stuff); the
experiment config's `synthetic.unseen` may name any others."""


def class_ids(names) -> tuple[int, ...]:
    """Class ids of `names` (a tuple of class names), in the order given.

    Raises:
        ValueError: an unknown or repeated name, or every class named (nothing left to train on).
    """
    names = tuple(names)
    unknown = [n for n in names if n not in CLASS_NAMES]
    if unknown:
        raise ValueError(
            f"synthetic.unseen names unknown classes {unknown}; the world has {', '.join(CLASS_NAMES)}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"synthetic.unseen={names} repeats a class; name each once.")
    if len(names) >= len(CLASS_NAMES):
        raise ValueError("synthetic.unseen names every class; leave some seen classes to train on.")
    return tuple(CLASS_NAMES.index(n) for n in names)


UNSEEN: tuple[int, ...] = class_ids(DEFAULT_UNSEEN)
SEEN: tuple[int, ...] = tuple(i for i in range(len(CLASSES)) if i not in UNSEEN)
THINGS: tuple[int, ...] = tuple(i for i, c in enumerate(CLASSES) if not c.stuff)
STUFF: tuple[int, ...] = tuple(i for i, c in enumerate(CLASSES) if c.stuff)
SKY = CLASS_NAMES.index("sky")
IGNORE = 255

WORLD_VERSION = 2  # bump whenever a change alters rendered items (invalidates pretrained caches)

SPLITS = {"pretrain": 0, "train": 1, "validation": 2, "test": 3}
"""Split name -> stream id; images of different splits never share a random stream."""

OBJECT_COUNTS = (0, 1, 2, 3)
OBJECT_COUNT_PROBS = (0.05, 0.3, 0.4, 0.25)
RADIUS = (0.16, 0.26)  # object size as a fraction of the image side
TWO_STUFF_PROB = 0.6
SKY_ON_TOP_PROB = 0.6
ILLUMINATION = (0.9, 1.08)
NOISE_STD = 3.0


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLITS)}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def _background(grid: P.Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stuff layout: image `[H, W, 3]` float and label `[H, W]` uint8."""
    y, x = grid
    if rng.random() < TWO_STUFF_PROB:
        ground = [s for s in STUFF if s != SKY]
        top = SKY if rng.random() < SKY_ON_TOP_PROB else int(rng.choice(ground))
        bottom = int(rng.choice([s for s in ground if s != top]))
        low, high = (0.3, 0.0, 3.0, 0.0), (0.65, 0.06, 10.0, 2 * np.pi)
        level, amp, freq, phase = (float(a) for a in rng.uniform(low, high))
        lower = y > level + amp * np.sin(freq * x + phase)
        regions = ((top, ~lower), (bottom, lower))
    else:
        regions = ((int(rng.choice(STUFF)), np.ones_like(y, bool)),)
    image, label = None, None
    for cls, mask in regions:
        spec = CLASSES[cls]
        colour = spec.texture(grid, rng, np.float32(spec.colour), None)
        if image is None:
            image, label = colour, np.full(y.shape, cls, np.uint8)
        else:
            image = np.where(mask[..., None], colour, image)
            label[mask] = cls
    return image, label


def _objects(grid: P.Grid, rng: np.random.Generator, image: np.ndarray, label: np.ndarray):
    """Paints zero to three distinct things over the background; returns the new image.

    `label` `[H, W]` is updated in place; `image` `[H, W, 3]` is returned.
    """
    count = int(rng.choice(OBJECT_COUNTS, p=OBJECT_COUNT_PROBS))
    for cls in rng.choice(THINGS, size=count, replace=False):
        spec = CLASSES[int(cls)]
        cy, cx = (float(a) for a in rng.uniform(0.18, 0.82, 2))
        r, angle = float(rng.uniform(*RADIUS)), float(rng.uniform(0, 2 * np.pi))
        fp = spec.shape(grid, rng, cy, cx, r, angle)
        colour = spec.texture(grid, rng, np.float32(spec.colour), fp)
        image = np.where(fp.mask[..., None], colour, image)
        label[fp.mask] = cls
    return image


def caption_for(present: list[int], rng: np.random.Generator) -> str:
    """A template caption naming each class id in `present` exactly once.

    Args:
        present: class ids visible in the image.
        rng: chooses the template and the order of things.

    Returns:
        e.g. 'a photo of a tomato and a tire on grass and sky.'
    """
    things = [CLASS_NAMES[i] for i in rng.permutation([i for i in present if i in THINGS])]
    stuff = [CLASS_NAMES[i] for i in present if i in STUFF]
    where = " and ".join(stuff)
    if not things:
        templates = ("a photo of {w}.", "a view of {w}.", "{w}.", "a picture of {w}.")
        return templates[rng.integers(len(templates))].format(w=where)
    objs = [f"a {t}" for t in things]
    what = objs[0] if len(objs) == 1 else ", ".join(objs[:-1]) + " and " + objs[-1]
    templates = (
        "a photo of {t} on {w}.",
        "{t} on {w}.",
        "a picture of {w} with {t}.",
        "a photo of {w} and {t}.",
        "there is {t} on {w}.",
    )
    return templates[rng.integers(len(templates))].format(t=what, w=where)


def render(seed: int, split: str, index: int, size: int = 64) -> dict:
    """Renders item `index` of `split`.

    Args:
        seed: world seed.
        split: one of SPLITS.
        index: item number (>= 0).
        size: image side in pixels (the scene is resolution-independent).

    Returns:
        {'image': uint8 [size, size, 3], 'label': uint8 [size, size] class ids,
         'caption': str naming exactly the classes in 'label'}.
    """
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    rng = _rng(seed, split, index)
    grid = P.pixel_grid(size)
    image, label = _background(grid, rng)
    image = _objects(grid, rng, image, label)
    gain = np.float32(rng.uniform(*ILLUMINATION))
    noise = P.noise(rng, image.shape)
    image = np.clip(image * gain + (noise * NOISE_STD + 0.5), 0, 255).astype(np.uint8)
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=len(CLASSES))).tolist()
    return {"image": image, "label": label, "caption": caption_for(present, rng)}


def class_colours() -> np.ndarray:
    """Nominal class colours `[K, 3]` uint8, e.g. for drawing label maps."""
    return np.array([c.colour for c in CLASSES], np.uint8)
