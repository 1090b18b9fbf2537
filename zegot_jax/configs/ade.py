"""ADE20K-150, evaluation only (cross-dataset): score a run trained on another dataset.

  python evaluate.py --config=configs/ade.py --checkpoint=runs/coco

The prompts are shared across classes, so the run's learned contexts and DLFA projections apply to
ADE's 150 names unchanged. ADE has no seen/unseen split here: every class counts as unseen, no
seen-class penalty applies, and mIoU over all 150 classes is the number to report.
"""

from zegot_jax.configs import common


def get_config(arg: str | None = None):
    """Returns the ADE20K-150 config, for evaluation only (a run trained elsewhere is scored on it).

    Args:
        arg: comma-separated variants, as `common.parse_arg` reads them: e.g. 'smoke' (tiny random
            CLIP and data, a CPU check) or 'solver=<name>' (a registered transport).
    """
    c = common.get_config()
    c.data.name = "ade20k"
    return common.apply_variants(c, common.parse_arg(arg), transductive_steps=0)
