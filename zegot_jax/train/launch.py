"""What `loop.train` checks before it builds a model or writes a file; creates nothing.

Every config value (`zegot_jax.config_checks`), the workdir (a directory it may write), a resume's
config against the one saved with the run (only the fields in `RESUMABLE` may change),
`train.init_from`, and that the dataset is prepared.
"""

import json
import sys
from typing import Any

import ml_collections

from zegot_jax import config_checks, errors
from zegot_jax.train import checkpoint as ckpt_lib
from zegot_jax.train import inputs, optim

# The fields a resumed run may change: how long and how often, evaluation-only settings, and how
# (not what) the text tower computes. Anything else alters the model, the data or the
# optimisation, and is refused.
RESUMABLE = (
    "train.num_steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.eval_every", "train.init_from", "data.num_workers", "data.data_dir",
    "data.eval_short_side", "data.eval_max_images", "eval.mode", "eval.crop", "eval.stride",
    "eval.seen_penalty", "eval.batch_size", "eval.training_free_baseline", "eval.figure",
    "model.ensemble_weight", "model.prefix_shared", "model.text_remat", "loss.per_image",
    "synthetic.eval_images",
)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}`."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> list[tuple[str, Any, Any]]:
    """`(field, saved value, new value)` for every field both configs have that differs and may
    not change on a resume (see `RESUMABLE`)."""
    old = flatten(saved)
    new = flatten(json.loads(config.to_json_best_effort()))
    return [(k, old[k], new[k]) for k in sorted(old.keys() & new.keys())
            if old[k] != new[k] and k not in RESUMABLE]


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises ValueError if `workdir` holds a run whose saved config differs where it may not."""
    step = ckpt_lib.saved_step(workdir)
    if step is None:
        return
    if config.train.num_steps < step:
        raise ValueError(f"{workdir} is already trained to step {step}, beyond "
                         f"train.num_steps={config.train.num_steps}: a resume cannot go back. "
                         f"Score it with evaluate.py --checkpoint={workdir}, or train a new run "
                         "in another --workdir.")
    saved = ckpt_lib.read_config(workdir)
    changes = config_changes(saved, config)
    if changes:
        listed = "; ".join(f"{k}: saved {old!r}, now {new!r}" for k, old, new in changes)
        raise ValueError(f"Cannot resume {workdir} with a different config ({listed}). A resume "
                         f"may change only {', '.join(RESUMABLE)}; use the saved values or "
                         "another --workdir.")
    before = saved.get("train", {}).get("num_steps", config.train.num_steps)
    if before != config.train.num_steps:
        print(f"note: {schedule_change(config, before, step)}", file=sys.stderr, flush=True)


def schedule_change(config: ml_collections.ConfigDict, before: int, step: int) -> str:
    """What resuming at `step` with `train.num_steps` changed from `before` does to the rate."""
    old = float(optim.make_optimizer(config.optim, before)[1](step))
    new = float(optim.make_optimizer(config.optim, config.train.num_steps)[1](step))
    return (f"train.num_steps changes from {before} to {config.train.num_steps}: the learning-"
            f"rate schedule (warmup, then decay to optim.min_learning_rate at num_steps) is "
            f"recomputed, so step {step} resumes at {new:.3g} instead of {old:.3g}"
            + (f" ({new / old:.2g}x)." if old > 0 else "."))


def check_init_from(path: str) -> None:
    """Raises FileNotFoundError unless `path` (train.init_from) holds a checkpoint."""
    if path and not ckpt_lib.has_checkpoint(path):
        raise FileNotFoundError(f"train.init_from={path!r} holds no checkpoint: give the --workdir "
                                "of a finished train.py run.")


def check(config: ml_collections.ConfigDict, workdir: str, *, num_devices: int) -> None:
    """Everything `train` verifies before it starts; raises the first kind of problem found."""
    config_checks.check(config, num_devices=num_devices)
    errors.check_writable_dir(workdir, "--workdir")
    inputs.DataSetup.from_config(config).check_available()
    check_resume(config, workdir)
    if not ckpt_lib.has_checkpoint(workdir):
        check_init_from(config.train.init_from)
