"""The picture a run leaves in its workdir: images, ground truth, prediction, per-prompt maps.

One row per held-out image: the image, its ground truth, the prediction over all classes, the
training-free template baseline's prediction (when given), and the N per-prompt similarity maps
(mean over layers) of one unseen class, the class the prompts were never trained on.
"""

from typing import Any

import ml_collections
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from zegot_jax import viz
from zegot_jax.data import transforms
from zegot_jax.evaluation import evaluator
from zegot_jax.evaluation import segmenter as segmenter_lib


def results_figure(
    segmenter: segmenter_lib.Segmenter,
    examples: list[dict[str, Any]],
    class_names: tuple[str, ...],
    focus: int,
    baseline: segmenter_lib.Segmenter | None = None,
) -> Figure:
    """Rows of image | ground truth | prediction | [training-free] | per-prompt maps of `focus`."""
    colours = viz.palette(len(class_names))
    results = [segmenter.segment(ex["image"], class_names, details=True) for ex in examples]
    free = (
        [baseline.segment(ex["image"], class_names, calibrate=False).label_map for ex in examples]
        if baseline is not None
        else None
    )
    num_prompts = results[0].similarity.shape[-1]
    first = 3 + (free is not None)  # first per-prompt column
    cols = first + num_prompts
    fig = viz.new_figure(1.6 * cols + 1.5, 1.7 * len(results) + 0.6, layout="constrained")
    axes = np.asarray(fig.subplots(len(results), cols, squeeze=False))
    for r, (ex, result) in enumerate(zip(examples, results, strict=True)):
        maps = result.similarity.mean(0)[focus]  # [h, w, N]
        panels = [result.image, viz.colorize(ex["label"], colours), viz.colorize(result.label_map, colours)]
        titles = ["image", "ground truth", "prediction"]
        if free is not None:
            panels.append(viz.colorize(free[r], colours))
            titles.append("training-free")
        panels += [maps[..., n] for n in range(num_prompts)]
        titles += [f"{class_names[focus]}: prompt {n}" for n in range(num_prompts)]
        for c, (panel, title) in enumerate(zip(panels, titles, strict=True)):
            ax = axes[r, c]
            prompt_map = c >= first
            ax.imshow(panel, vmin=maps.min() if prompt_map else None, vmax=maps.max() if prompt_map else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize="small")
    present = sorted({int(k) for ex in examples for k in np.unique(ex["label"]) if k < len(colours)})
    handles = [Patch(color=colours[k] / 255, label=class_names[k]) for k in present]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 8), fontsize="small")
    return fig


def write_results_figure(
    path: str,
    config: ml_collections.ConfigDict,
    segmenter_parts: tuple,
    source: Any,
    class_names: tuple[str, ...],
    unseen: tuple[int, ...],
    num_images: int = 4,
    baseline_parts: tuple | None = None,
) -> int:
    """Saves `results_figure` for the first images of `source`; returns the class shown.

    `baseline_parts` (`(graphdef, params, frozen)` of the training-free model) adds its
    prediction beside the trained one.

    The class is the unseen class present in most of those images (the first unseen class if
    none is present; the first class if there are no unseen classes).
    """
    graphdef, params, frozen = segmenter_parts
    examples = []
    for i in range(min(num_images, len(source))):
        record = source[i]
        examples.append(
            {
                "image": transforms.decode_image(record["image"], f"record {i}"),
                "label": transforms.decode_label(record["label"], f"record {i}"),
            }
        )
    candidates = unseen or (0,)
    counts = [sum(int((ex["label"] == k).any()) for ex in examples) for k in candidates]
    focus = candidates[int(np.argmax(counts))]
    segmenter = segmenter_lib.Segmenter(config, params, graphdef, frozen)
    baseline = None
    if baseline_parts is not None:
        free_graphdef, free_params, free_frozen = baseline_parts
        baseline = segmenter_lib.Segmenter(
            evaluator.training_free_experiment(config), free_params, free_graphdef, free_frozen
        )
    viz.save(results_figure(segmenter, examples, class_names, focus, baseline), path)
    return focus
