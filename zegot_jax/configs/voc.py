"""PASCAL VOC 2012 (20 classes, 15 seen / 5 unseen), ViT-B/16 at 512x512.

Inductive (20k steps):
  python train.py --config=configs/voc.py --workdir=runs/voc
Transductive (10k more steps from the inductive checkpoint at 10k):
  python train.py --config=configs/voc.py --workdir=runs/voc_inductive_10k \
      --config.train.num_steps=10000
  python train.py --config=configs/voc.py:transductive --workdir=runs/voc_trans \
      --config.train.init_from=runs/voc_inductive_10k
Fully supervised bound: `configs/voc.py:supervised`. Tiny CPU check: `configs/voc.py:smoke`.

Numbers to compare with (mIoU(S) / mIoU(U) / hIoU, ViT-B/16): ZegCLIP inductive 91.9 / 77.8 / 84.3,
transductive 92.3 / 89.9 / 91.1; OTSeg hIoU 84.5 (inductive), 94.2 (transductive); ZegFormer
86.4 / 63.6 / 73.3. Report the mean and spread over seeds.
"""

from zegot_jax.configs import common


def get_config(arg: str | None = None):
    """Returns the PASCAL VOC 2012 config: inductive, 20k steps, unless `arg` says otherwise.

    Args:
        arg: comma-separated variants, as `common.parse_arg` reads them: 'inductive' (the default),
            'transductive' (10k steps, no seen penalty), 'supervised' (the fully supervised bound),
            'smoke' (tiny random CLIP and data, a CPU check), 'solver=<name>' (a registered
            transport).
    """
    c = common.get_config()
    c.data.name = "voc"
    c.model.templates = common.TEMPLATES[:6]
    c.train.num_steps = 20_000
    return common.apply_variants(c, common.parse_arg(arg), transductive_steps=10_000)
