"""Trains ZegOT: `python train.py --config=configs/coco.py --workdir=runs/coco`.

Flags only; everything else is `zegot_jax.train.loop.train`. Override any field with
`--config.a.b=value`; a mistyped or wrongly typed field fails at launch (the config is locked).
Exit status: 0 done, 1 a fixable mistake (one line on stderr), 75 stopped by SIGTERM after saving
a checkpoint (run the same command again to resume; on several hosts, all stop at one step), 69 a
peer process of a multi-host run was lost (one line; run the same command again on every host).
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from zegot_jax.errors import PREEMPTED_EXIT_STATUS, parse_flags, user_errors
from zegot_jax.evaluation import evaluator
from zegot_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file[:variant].", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Where checkpoints, metrics and results go (a local path or gs://...). An existing run there is resumed.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    """Trains `--config` in `--workdir`, then prints the headline scores (exit status 75 if preempted)."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; --verbosity=0 shows it
        logging.set_verbosity(logging.WARNING)
    with user_errors():
        summary = loop.train(_CONFIG.value, _WORKDIR.value)
    if "preempted_at" in summary:  # saved; the same command resumes
        sys.exit(PREEMPTED_EXIT_STATUS)
    if "hiou" in summary and jax.process_index() == 0:
        print(evaluator.headline(summary), flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
