"""PASCAL Context-59 (49 seen / 10 unseen), ViT-B/16 at 480x480.

Inductive (40k steps):
  python train.py --config=configs/context.py --workdir=runs/context
Transductive (20k more steps from the inductive checkpoint at 20k):
  python train.py --config=configs/context.py:transductive --workdir=runs/context_trans \
      --config.train.init_from=runs/context_inductive_20k
Fully supervised bound: `configs/context.py:supervised`. Tiny CPU check: `configs/context.py:smoke`.

Peer numbers for Context-59 are not in the peers' papers we compare with; ZegOT's reviewers
describe it as best on VOC and Context. Report the mean and spread over seeds.
"""

from zegot_jax.configs import common


def get_config(arg: str | None = None):
    """Returns the PASCAL Context-59 config at 480x480: inductive, 40k steps, unless `arg` says otherwise.

    Args:
        arg: comma-separated variants, as `common.parse_arg` reads them: 'inductive' (the default),
            'transductive' (20k steps, no seen penalty), 'supervised' (the fully supervised bound),
            'smoke' (tiny random CLIP and data, a CPU check), 'solver=<name>' (a registered
            transport).
    """
    c = common.get_config()
    c.data.name = "context"
    c.data.crop_size = 480
    c.data.base_size = (520, 520)
    c.data.eval_short_side = 480
    c.eval.crop = 480
    c.eval.stride = 80
    c.train.num_steps = 40_000
    return common.apply_variants(c, common.parse_arg(arg), transductive_steps=20_000)
