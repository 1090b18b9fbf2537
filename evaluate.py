"""Evaluates a trained run: `python evaluate.py --config=configs/voc.py --checkpoint=runs/voc`.

Cross-dataset: a run trained on one dataset scored on another's classes, e.g.
`python evaluate.py --config=configs/ade.py --checkpoint=runs/coco` (the prompts are shared across
classes, so any vocabulary works). Writes results.md / results.json into --out (default: the run).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from zegot_jax.errors import parse_flags, user_errors
from zegot_jax.evaluation import run

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config of the evaluation dataset.", lock_config=True
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A training workdir (its latest checkpoint).")
_OUT = flags.DEFINE_string("out", None, "Where to write results (default: the checkpoint's dir).")
flags.mark_flags_as_required(["config", "checkpoint"])


def main(argv):
    """Evaluates `--checkpoint`'s run on `--config`'s dataset and writes the results to `--out`."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; --verbosity=0 shows it
        logging.set_verbosity(logging.WARNING)
    with user_errors():
        run.evaluate_checkpoint(_CONFIG.value, _CHECKPOINT.value, out=_OUT.value)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
