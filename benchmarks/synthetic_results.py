"""RESULTS.md: ZegOT and its ablations on the synthetic world, several seeds, mean +- std.

  python benchmarks/synthetic_results.py --seeds 0 1 2 --workdir runs/results

Rows: hand-crafted templates without training (a MaskCLIP-like baseline), one learned prompt
without OT, N learned prompts without OT (uniform plan), ZegOT (N prompts with OT), and ZegOT
without the DLFA alignment projections. Besides mIoU(S)/mIoU(U)/hIoU each row reports how
different the per-prompt maps of a class are (1 - mean correlation) and the normalised entropy of
the per-pixel plan rows (1 = uniform), on the classes present in held-out images. Runs already
finished in --workdir are only re-evaluated. Prints Markdown; asserts nothing.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import synthetic  # noqa: E402
from zegot_jax.evaluation import evaluator, prompt_stats  # noqa: E402
from zegot_jax.evaluation import run as run_lib  # noqa: E402
from zegot_jax.inference import override  # noqa: E402
from zegot_jax.train import inputs, loop  # noqa: E402
from zegot_jax.train import state as state_lib  # noqa: E402

VARIANTS = {
    "templates, no training": {"model.prompts": "templates", "model.alignment": False,
                               "model.ot.enabled": False, "train.num_steps": 0,
                               "eval.seen_penalty": 0.0},
    "1 learned prompt, no OT": {"model.num_prompts": 1, "model.ot.enabled": False},
    "N=4 learned prompts, no OT (uniform plan)": {"model.ot.enabled": False},
    "ZegOT (N=4 prompts + OT)": {},
    "ZegOT without alignment projections": {"model.alignment": False},
}
SCORES = ("miou_seen", "miou_unseen", "hiou", "prompt_diversity", "plan_entropy")


def run_one(config, workdir: str) -> dict:
    """Trains (or resumes) one run and measures its scores and prompt statistics."""
    start = time.perf_counter()
    summary = loop.train(config, workdir)
    seconds = time.perf_counter() - start
    if config.train.num_steps:
        parts, params = run_lib.load_trained(config, workdir)
    else:  # nothing was trained: the model as built
        parts = state_lib.split_model(state_lib.build_model(config))
        params = parts.params
    data = inputs.DataSetup.from_config(config)
    text = evaluator.text_features_of(parts.graphdef, params, parts.frozen, data.class_names,
                                      config.clip.text_context_length)
    stats = prompt_stats.prompt_statistics(parts.graphdef, params, parts.frozen, text,
                                           data.eval_iterator(),
                                           patch=config.synthetic.pretrain.model.patch_size)
    return {**{k: summary[k] for k in SCORES[:3]}, **stats, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default="runs/results")
    parser.add_argument("--config_arg", default=None, help="e.g. 'smoke' for a quick check")
    args = parser.parse_args()
    base = synthetic.get_config(args.config_arg)
    rows = {}
    for name, changes in VARIANTS.items():
        for seed in args.seeds:
            config = override(base, {**changes, "seed": seed})
            slug = name.split(" (")[0].replace(" ", "_").replace(",", "").replace("=", "")
            result = run_one(config, str(Path(args.workdir) / f"{slug}_seed{seed}"))
            rows.setdefault(name, []).append(result)
            print(json.dumps({"variant": name, "seed": seed, **result}), flush=True)
    print("\n| variant | runs | mIoU(S) | mIoU(U) | hIoU | prompt diversity | plan entropy |")
    print("|---|---|---|---|---|---|---|")
    for name, results in rows.items():
        cells = []
        for key in SCORES:
            values = np.array([r[key] for r in results], float)
            scale = 100 if key.startswith(("miou", "hiou")) else 1
            digits = 1 if scale == 100 else 3
            if np.isnan(values).any():  # diversity of a single prompt is undefined
                cells.append("n/a")
                continue
            cells.append(f"{scale * values.mean():.{digits}f} ± {scale * values.std():.{digits}f}")
        print(f"| {name} | {len(results)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
