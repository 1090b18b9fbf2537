"""The picture a run leaves in its workdir: images, ground truth, prediction, per-prompt maps.

One row per held-out image: the image, its ground truth, the prediction over all classes, and the N
per-prompt similarity maps (mean over layers) of one unseen class, the class the prompts were
never trained on.
"""

from typing import Any

import ml_collections
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from zegot_jax import viz
from zegot_jax.data import transforms
from zegot_jax.evaluation import segmenter as segmenter_lib


def results_figure(segmenter: segmenter_lib.Segmenter, examples: list[dict[str, Any]],
                   class_names: tuple[str, ...], focus: int) -> Figure:
    """Rows of image | ground truth | prediction | per-prompt maps of class `focus`."""
    colours = viz.palette(len(class_names))
    results = [segmenter.segment(ex["image"], class_names, details=True) for ex in examples]
    num_prompts = results[0].similarity.shape[-1]
    cols = 3 + num_prompts
    fig = viz.new_figure(1.6 * cols + 1.5, 1.7 * len(results) + 0.6, layout="constrained")
    axes = np.asarray(fig.subplots(len(results), cols, squeeze=False))
    for r, (ex, result) in enumerate(zip(examples, results, strict=True)):
        maps = result.similarity.mean(0)[focus]  # [h, w, N]
        panels = [result.image, viz.colorize(ex["label"], colours),
                  viz.colorize(result.label_map, colours)]
        panels += [maps[..., n] for n in range(num_prompts)]
        titles = ["image", "ground truth", "prediction"]
        titles += [f"{class_names[focus]}: prompt {n}" for n in range(num_prompts)]
        for c, (panel, title) in enumerate(zip(panels, titles, strict=True)):
            ax = axes[r, c]
            ax.imshow(panel, vmin=maps.min() if c >= 3 else None, vmax=maps.max() if c >= 3 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize="small")
    present = sorted({int(k) for ex in examples for k in np.unique(ex["label"]) if k < len(colours)})
    handles = [Patch(color=colours[k] / 255, label=class_names[k]) for k in present]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8),
               fontsize="small")
    return fig


def write_results_figure(path: str, config: ml_collections.ConfigDict, segmenter_parts: tuple,
                         source: Any, class_names: tuple[str, ...], unseen: tuple[int, ...],
                         num_images: int = 4) -> int:
    """Saves `results_figure` for the first images of `source`; returns the class shown.

    The class is the unseen class present in most of those images (the first unseen class if
    none is present; the first class if there are no unseen classes).
    """
    graphdef, params, frozen = segmenter_parts
    examples = []
    for i in range(min(num_images, len(source))):
        record = source[i]
        examples.append({"image": transforms.decode_image(record["image"], f"record {i}"),
                         "label": transforms.decode_label(record["label"], f"record {i}")})
    candidates = unseen or (0,)
    counts = [sum(int((ex["label"] == k).any()) for ex in examples) for k in candidates]
    focus = candidates[int(np.argmax(counts))]
    segmenter = segmenter_lib.Segmenter(config, params, graphdef, frozen)
    viz.save(results_figure(segmenter, examples, class_names, focus), path)
    return focus
