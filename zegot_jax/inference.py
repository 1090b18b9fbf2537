"""Segment any image with any vocabulary using a trained ZegOT run (the public face).

    segmenter = Segmenter.from_run("runs/synthetic")
    result = segmenter.segment("photo.png", ["red ball", "grass", "sky"])
    result.label_map          # [H, W] int32 indices into result.class_names
    result.scores             # [K, H, W] sigmoid scores at the image's resolution

The implementation lives with the evaluation protocol it applies
(`zegot_jax.evaluation.segmenter`); images are read by `zegot_jax.data.images`, runs by
`zegot_jax.runs`, and dotted-key overrides are `zegot_jax.configs.overrides`.
"""

from zegot_jax.configs.overrides import override
from zegot_jax.data.images import ImageLike, load_image
from zegot_jax.evaluation.segmenter import SegmentationResult, Segmenter, processed_size
from zegot_jax.runs.checkpoint import saved_config
from zegot_jax.runs.saved import check_run

__all__ = [
    "ImageLike",
    "SegmentationResult",
    "Segmenter",
    "check_run",
    "load_image",
    "override",
    "processed_size",
    "saved_config",
]
