"""The OT lab (`notebooks/ot_playground.ipynb`): its tour of `model.ot` and its plan figure.

    plan_figure({"MPOT": result_a, "mine": result_b}, "tomato")

(The notebook ranks candidates with `zegot_jax.experiments.ranking.rank_variants`.)

Every variant in `TOUR` changes the computation of the default (`tests/experiments/test_ot_lab.py`
checks that its transport's forward or gradient differs), so no row of the notebook's table is the
default under another name.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from zegot_jax import viz
from zegot_jax.inference import SegmentationResult

DEFAULT = "MPOT (default: Newton, epsilon 0.05)"
# name -> dotted-key overrides of `model.ot` (see `configs/common.py` for each field).
TOUR: dict[str, dict[str, Any]] = {
    DEFAULT: {},
    "no OT (uniform plan)": {"model.ot.enabled": False},
    "epsilon 0.5 (flatter plans)": {"model.ot.epsilon": 0.5},
    # num_iterations counts Sinkhorn iterations; Newton (the default) runs newton_steps.
    "Sinkhorn, 5 iterations (unconverged)": {"model.ot.solver": "sinkhorn", "model.ot.num_iterations": 5},
    # Unbalanced marginals need Sinkhorn: the Newton solver is balanced only.
    "unbalanced tau 0.5 (Sinkhorn)": {"model.ot.solver": "sinkhorn", "model.ot.tau": 0.5},
    "stop-gradient plan": {"model.ot.plan_gradient": False},
}


def plan_figure(results: Mapping[str, SegmentationResult], class_name: str, *, layer: int = -1) -> Figure:
    """Each transport's plan for one class, side by side: a row per transport, a column per prompt.

    Args:
        results: transport name -> `Segmenter.segment(..., details=True)` of the same image and
          vocabulary (the same number of prompts).
        class_name: the class to show (in every result's vocabulary).
        layer: the position in `result.layers` to show.

    Returns:
        The figure; each cell is each pixel's share of that prompt, on one scale (0 to 1) for all.
    """
    if not results:
        raise ValueError("plan_figure: give at least one result.")
    first = next(iter(results.values()))
    num_prompts, (h, w) = first.plan.shape[-1], first.plan.shape[2:4]
    cell = 1.6
    fig = viz.new_figure(
        cell * num_prompts + 1.6, (cell * h / w + 0.2) * len(results) + 0.5, layout="constrained"
    )
    axes = np.asarray(fig.subplots(len(results), num_prompts, squeeze=False))
    for r, (name, result) in enumerate(results.items()):
        if result.plan is None or result.plan.shape[-1] != num_prompts:
            raise ValueError(
                f"plan_figure: {name!r} has no plan with {num_prompts} prompts "
                "(segment(..., details=True) of the same model size)."
            )
        shares = result.plan[layer, result.class_names.index(class_name)]  # [h, w, N]
        for n in range(num_prompts):
            image = axes[r, n].imshow(shares[..., n], vmin=0.0, vmax=1.0, cmap="viridis")
            axes[r, n].set_xticks([])
            axes[r, n].set_yticks([])
            if r == 0:
                axes[r, n].set_title(f"prompt {n}", fontsize="small")
        axes[r, 0].set_ylabel(name, fontsize="small")
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01)
    fig.suptitle(
        f"'{class_name}': each pixel's share of each prompt (layer {first.layers[layer]})", fontsize="medium"
    )
    return fig
