"""COCO-Stuff 164K (171 classes, 156 seen / 15 unseen), ViT-B/16 at 512x512.

Inductive (80k steps):
  python train.py --config=configs/coco.py --workdir=gs://BUCKET/runs/coco
Transductive (40k more steps from the inductive checkpoint at 40k):
  python train.py --config=configs/coco.py:transductive --workdir=gs://BUCKET/runs/coco_trans \
      --config.train.init_from=gs://BUCKET/runs/coco_inductive_40k
Fully supervised bound: `configs/coco.py:supervised`. Tiny CPU check: `configs/coco.py:smoke`.

Numbers to compare with (mIoU(S) / mIoU(U) / hIoU, ViT-B/16): ZegCLIP inductive 40.2 / 41.1 / 40.8,
transductive 40.7 / 59.9 / 48.5; OTSeg hIoU 41.4 (inductive), 49.5 (transductive); ZegFormer
36.6 / 33.2 / 34.8. ZegOT is reported about 2.2 hIoU below ZegCLIP here.
"""

from zegot_jax.configs import common


def get_config(arg: str | None = None):
    """Returns the COCO-Stuff 164K config: inductive, 80k steps, unless `arg` says otherwise.

    Args:
        arg: comma-separated variants, as `common.parse_arg` reads them: 'inductive' (the default),
            'transductive' (40k steps, no seen penalty), 'supervised' (the fully supervised bound),
            'smoke' (tiny random CLIP and data, a CPU check), 'solver=<name>' (a registered
            transport).
    """
    c = common.get_config()
    c.data.name = "coco_stuff"
    c.train.num_steps = 80_000
    return common.apply_variants(c, common.parse_arg(arg), transductive_steps=40_000)
