"""The laptop-scale zero-shot segmentation world and its own small CLIP (data and a backbone).

- `world`: procedural images with pixel-exact masks and captions (`CLASS_NAMES`, `UNSEEN`).
- `source.SyntheticSource`: the world as a random-access source for the input pipeline.
- `pretrain`: contrastive pretraining of a small `zegot_jax.clip.CLIP`; `pretrained_clip(config)`
  trains once and caches the weights.

The experiments run on it (rankings, training-free probes, the OT lab's figures) are
`zegot_jax.experiments`.
"""

from zegot_jax.synthetic.pretrain import default_pretrain_config, pretrained_clip
from zegot_jax.synthetic.source import SyntheticSource
from zegot_jax.synthetic.world import CLASS_NAMES, SEEN, UNSEEN

__all__ = [
    "CLASS_NAMES",
    "SEEN",
    "UNSEEN",
    "SyntheticSource",
    "default_pretrain_config",
    "pretrained_clip",
]
