"""Segment any image with any vocabulary using a trained ZegOT run (the public face).

    segmenter = Segmenter.from_run("runs/synthetic")
    result = segmenter.segment("photo.png", ["red ball", "grass", "sky"])
    result.label_map          # [H, W] int32 indices into result.class_names
    result.scores             # [K, H, W] sigmoid scores at the image's resolution

The implementation lives with the evaluation protocol it applies
(`zegot_jax.evaluation.segmenter`); dotted-key overrides are `zegot_jax.config_overrides`.
"""

from zegot_jax.config_overrides import override
from zegot_jax.evaluation.segmenter import (
    ImageLike,
    SegmentationResult,
    Segmenter,
    check_run,
    load_image,
    processed_size,
    saved_config,
)

__all__ = ["ImageLike", "SegmentationResult", "Segmenter", "check_run", "load_image",
           "override", "processed_size", "saved_config"]
