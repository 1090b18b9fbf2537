"""Pictures of segmentations: colour overlays with a legend, and grids of per-prompt maps.

Figures are plain `matplotlib.figure.Figure` objects drawn with the Agg canvas (no pyplot, no global
backend switch), so they work headless, in scripts and in notebooks (a Figure displays inline).
"""

from __future__ import annotations

import colorsys
import io
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from zegot_jax import storage

if TYPE_CHECKING:  # only annotations: the pictures sit below the segmenter that they draw
    from zegot_jax.evaluation.segmenter import SegmentationResult

KINDS = ("similarity", "plan")


def palette(num_classes: int) -> np.ndarray:
    """Distinct, deterministic colours `[K, 3]` uint8 (golden-ratio hues, alternating lightness)."""
    colours = []
    for i in range(num_classes):
        hue = (i * 0.618033988749895) % 1.0
        light, sat = (0.5, 0.75) if i % 2 == 0 else (0.38, 0.9)
        colours.append(colorsys.hls_to_rgb(hue, light, sat))
    return np.round(np.asarray(colours, np.float64).reshape(-1, 3) * 255).astype(np.uint8)


def colorize(label_map: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Label map `[H, W]` -> RGB `[H, W, 3]` uint8; ids outside `[0, K)` (e.g. 255) are black."""
    label_map = np.asarray(label_map)
    valid = (label_map >= 0) & (label_map < len(colours))
    out = np.zeros((*label_map.shape, 3), np.uint8)
    out[valid] = colours[label_map[valid]]
    return out


def blend(image: np.ndarray, label_map: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image `[H, W, 3]` uint8 with the class colours laid over it at opacity `alpha`."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    if image.shape[:2] != np.shape(label_map):
        raise ValueError(
            f"image {image.shape[:2]} and label map {np.shape(label_map)} differ in "
            "size; resize the label map (nearest) first."
        )
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colorize(label_map, colours)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def new_figure(width: float, height: float, layout: str | None = None) -> Figure:
    """A Figure on its own Agg canvas (no pyplot state)."""
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


# Images are drawn at most this many pixels on a side (every n-th pixel): a figure 8 inches wide
# shows no more, and a 12000 x 12000 photo blended at full size needs about 6 GiB.
DISPLAY_MAX_SIDE = 2000


def overlay_figure(
    result: SegmentationResult, *, alpha: float = 0.5, present_only: bool = True, title: str | None = None
) -> Figure:
    """The image, and the image with the colour-coded label map and a legend (pixel shares)."""
    colours = palette(len(result.class_names))
    height, width = result.label_map.shape
    counts = np.bincount(result.label_map.ravel(), minlength=len(result.class_names))
    every = -(-max(height, width) // DISPLAY_MAX_SIDE)
    image, label_map = result.image[::every, ::every], result.label_map[::every, ::every]
    fig = new_figure(8.0, 4.0 * height / width + 0.6)
    left, right = fig.subplots(1, 2)
    left.imshow(image)
    left.set_title("image")
    right.imshow(blend(image, label_map, colours, alpha))
    right.set_title(title or "segmentation")
    for ax in (left, right):
        ax.set_axis_off()
    shown = [i for i in np.argsort(-counts) if counts[i] > 0 or not present_only]
    handles = [
        Patch(
            color=colours[i] / 255.0, label=f"{result.class_names[i]} ({100 * counts[i] / counts.sum():.0f}%)"
        )
        for i in shown
    ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.9, 0.5), frameon=False, fontsize="small")
    fig.subplots_adjust(left=0.01, right=0.89, wspace=0.03)
    return fig


def pick_classes(
    result: SegmentationResult, classes: Sequence[str] | None = None, limit: int = 4
) -> list[int]:
    """Indices of `classes` (by name), or of up to `limit` classes covering the most pixels."""
    if classes is not None:
        lookup = {n.lower(): i for i, n in enumerate(result.class_names)}
        missing = [c for c in classes if c.lower() not in lookup]
        if missing:
            raise ValueError(
                f"Classes {missing} are not in this result's vocabulary {list(result.class_names)}."
            )
        return [lookup[c.lower()] for c in classes]
    counts = np.bincount(result.label_map.ravel(), minlength=len(result.class_names))
    return [int(i) for i in np.argsort(-counts, kind="stable")[:limit] if counts[i] > 0]


def prompt_grid(
    result: SegmentationResult,
    classes: Sequence[str] | None = None,
    *,
    kinds: Sequence[str] = KINDS,
    layer: int | None = None,
    limit: int = 4,
) -> Figure:
    """Per-prompt maps of chosen classes: one row per (class, kind), one column per prompt.

    Args:
        result: from `Segmenter.segment(..., details=True)`.
        classes: class names to show (default: the `limit` largest in the label map).
        kinds: 'similarity' (cosine maps before OT) and/or 'plan' (each pixel's share of the prompt).
        layer: position in `result.layers` to show; None averages the layers.
        limit: how many classes when `classes` is None.
    """
    if result.similarity is None or result.plan is None:
        raise ValueError("This result has no per-prompt maps: call segment(..., details=True).")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds={list(kinds)}: choose from {KINDS}.")
    num_layers = result.similarity.shape[0]
    if layer is not None and not -num_layers <= layer < num_layers:
        raise ValueError(
            f"layer={layer} but the result has {num_layers} layers (CLIP layers {result.layers})."
        )
    ids = pick_classes(result, classes, limit)
    maps = {k: getattr(result, k) for k in kinds}
    maps = {k: (v.mean(0) if layer is None else v[layer]) for k, v in maps.items()}  # [K,h,w,N]
    num_prompts, (h, w) = result.similarity.shape[-1], result.similarity.shape[2:4]
    rows = [(i, k) for i in ids for k in kinds]
    cell = 1.6
    fig = new_figure(cell * num_prompts + 1.2, (cell * h / w + 0.15) * len(rows) + 0.5, layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), num_prompts, squeeze=False))
    where = "mean over layers" if layer is None else f"layer {result.layers[layer]}"
    for r, (i, kind) in enumerate(rows):
        values = maps[kind][i]  # [h, w, N]
        lo, hi = float(values.min()), float(values.max())
        for n in range(num_prompts):
            ax = axes[r, n]
            image = ax.imshow(values[..., n], vmin=lo, vmax=hi, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"prompt {n}", fontsize="small")
            if n == 0:
                ax.set_ylabel(f"{result.class_names[i]}\n{kind}", fontsize="small")
        fig.colorbar(image, ax=list(axes[r]), fraction=0.02, pad=0.01)
    fig.suptitle(f"per-prompt maps ({where})", fontsize="medium")
    return fig


def save(fig: Figure, path: str | os.PathLike, *, dpi: int = 100) -> None:
    """Writes the figure to a local path or `gs://` (format from the file extension), whole."""
    buffer = io.BytesIO()
    kind = os.path.splitext(os.fspath(path))[1][1:] or "png"
    fig.savefig(buffer, dpi=dpi, bbox_inches="tight", format=kind)
    storage.write_bytes(path, buffer.getvalue())


def save_label_map(label_map: np.ndarray, num_classes: int, path: str | os.PathLike) -> None:
    """A label map `[H, W]` as a PNG whose pixel values are the class indices (local or gs://).

    Up to 256 classes: a palette PNG coloured with `palette(num_classes)` (viewers show colours,
    `np.asarray(PIL.Image.open(path))` gives the indices); above: 16-bit grey.
    """
    if num_classes <= 256:
        img = PIL.Image.fromarray(np.asarray(label_map).astype(np.uint8), mode="P")
        colours = palette(num_classes)
        img.putpalette(colours.ravel().tolist() + [0] * (3 * (256 - num_classes)))
    else:
        img = PIL.Image.fromarray(np.asarray(label_map).astype(np.uint16))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    storage.write_bytes(path, buffer.getvalue())
