"""COCO-style run-length encoded masks, as stored in PASCAL in Detail's `trainval_merged.json`.

A mask `{'size': [H, W], 'counts': ...}` lists the lengths of alternating runs of 0 and 1 over the
pixels in column-major (Fortran) order, starting with a run of zeros. `counts` is either a list of
ints (uncompressed RLE) or a string (compressed RLE): each run length is written in 5-bit groups,
least significant first, as characters offset by 48; bit 0x20 of a character says that another
group follows, and bit 0x10 of the last group is the sign. From the third run on, the string stores
the difference to the run two places earlier. Polygon masks (lists of `[x0, y0, x1, y1, ...]`) are
rasterised with PIL.

This is a small independent implementation so that building PASCAL Context needs neither
pycocotools nor the Detail API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw


def counts_from_string(text: str) -> list[int]:
    """Parses compressed RLE counts into run lengths (vectorised with numpy)."""
    chars = np.frombuffer(text.encode("ascii"), np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        return []
    if chars[-1] & 0x20:
        raise ValueError(f"Truncated compressed RLE string {text[:40]!r}...")
    ends = np.flatnonzero((chars & 0x20) == 0)  # the last character of each value
    starts = np.concatenate([[0], ends[:-1] + 1])
    position = np.arange(chars.size) - np.repeat(starts, ends - starts + 1)
    values = np.add.reduceat((chars & 0x1F) << (5 * position), starts)
    negative = (chars[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * (ends - starts + 1))[negative]
    # From the third value on, each is stored as the difference to the value two places earlier.
    values[1::2] = np.cumsum(values[1::2])
    values[2::2] = np.cumsum(values[2::2])
    return values.tolist()


def counts_to_string(counts: Sequence[int]) -> str:
    """Writes run lengths as compressed RLE counts (inverse of `counts_from_string`)."""
    chars = []
    for i, count in enumerate(counts):
        value = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5
            more = value != -1 if chunk & 0x10 else value != 0
            if more:
                chunk |= 0x20
            chars.append(chr(chunk + 48))
    return "".join(chars)


def encode(mask: np.ndarray) -> dict[str, Any]:
    """Encodes a binary mask `[H, W]` as compressed RLE `{'size': [H, W], 'counts': str}`."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts_to_string(runs)}


def decode(
    segmentation: Mapping[str, Any] | Sequence[Sequence[float]], height: int, width: int
) -> np.ndarray:
    """Decodes one annotation's segmentation to a boolean mask `[height, width]`.

    Args:
        segmentation: RLE dict (`counts` as str or list of ints) or a list of polygons.
        height: Image height, used for polygons and to check the RLE size.
        width: Image width.

    Returns:
        bool `[height, width]`.

    Raises:
        ValueError: if the RLE size disagrees with the image or the runs do not cover it exactly.
    """
    if isinstance(segmentation, Mapping):
        size = [int(s) for s in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} does not match the image size {[height, width]}.")
        counts = segmentation["counts"]
        runs = counts_from_string(counts) if isinstance(counts, str) else [int(c) for c in counts]
        if sum(runs) != height * width or min(runs, default=0) < 0:
            raise ValueError(f"RLE runs sum to {sum(runs)} but the image has {height * width} pixels.")
        values = np.zeros(len(runs), dtype=bool)
        values[1::2] = True
        flat = np.repeat(values, runs)
        return flat.reshape((width, height)).T
    canvas = PIL.Image.new("L", (width, height), 0)
    draw = PIL.ImageDraw.Draw(canvas)
    for polygon in segmentation:
        points = [float(v) for v in polygon]
        if len(points) >= 6:
            draw.polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)
