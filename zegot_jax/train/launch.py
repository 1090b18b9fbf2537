"""What `loop.train` checks before it builds a model or writes a file; creates nothing.

Every config value (`zegot_jax.configs.checks`), the workdir (a directory it may write), a resume's
config against the one saved with the run (only `configs.checks.RESUMABLE` may change),
`train.init_from`, and that the dataset is prepared.
"""

import sys

import ml_collections

from zegot_jax import storage
from zegot_jax.configs import checks as config_checks
from zegot_jax.data.setup import DataSetup
from zegot_jax.runs import checkpoint as ckpt_lib
from zegot_jax.runs import saved as saved_run
from zegot_jax.train import optim


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises ValueError if `workdir` holds a run whose saved config differs where it may not."""
    step = ckpt_lib.saved_step(workdir)
    if step is None:
        return
    if config.train.num_steps < step:
        raise ValueError(
            f"{workdir} is already trained to step {step}, beyond "
            f"train.num_steps={config.train.num_steps}: a resume cannot go back. "
            f"Score it with evaluate.py --checkpoint={workdir}, or train a new run "
            "in another --workdir."
        )
    saved = ckpt_lib.read_config(workdir)
    changes = config_checks.resume_changes(saved, config)
    if changes:
        listed = "; ".join(f"{k}: saved {old!r}, now {new!r}" for k, old, new in changes)
        raise ValueError(
            f"Cannot resume {workdir} with a different config ({listed}). A resume "
            f"may change only {', '.join(config_checks.RESUMABLE)}; use the saved values or "
            "another --workdir."
        )
    before = saved.get("train", {}).get("num_steps", config.train.num_steps)
    if before != config.train.num_steps:
        print(f"note: {schedule_change(config, before, step)}", file=sys.stderr, flush=True)


def schedule_change(config: ml_collections.ConfigDict, before: int, step: int) -> str:
    """What resuming at `step` with `train.num_steps` changed from `before` does to the rate."""
    old = float(optim.make_optimizer(config.optim, before)[1](step))
    new = float(optim.make_optimizer(config.optim, config.train.num_steps)[1](step))
    return (
        f"train.num_steps changes from {before} to {config.train.num_steps}: the learning-"
        f"rate schedule (warmup, then decay to optim.min_learning_rate at num_steps) is "
        f"recomputed, so step {step} resumes at {new:.3g} instead of {old:.3g}"
        + (f" ({new / old:.2g}x)." if old > 0 else ".")
    )


def check(config: ml_collections.ConfigDict, workdir: str, *, num_devices: int) -> None:
    """Everything `train` verifies before it starts; raises the first kind of problem found."""
    config_checks.check(config, num_devices=num_devices)
    storage.check_writable(workdir, "--workdir")
    DataSetup.from_config(config).check_available()
    check_resume(config, workdir)
    if not ckpt_lib.has_checkpoint(workdir):
        saved_run.check_init_from(config.train.init_from)
