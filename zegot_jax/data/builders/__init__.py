"""TFDS builders of the four benchmarks; importing this module registers them with TFDS."""

from zegot_jax.data.builders.ade20k import ZegotAde150
from zegot_jax.data.builders.base import SegmentationBuilder
from zegot_jax.data.builders.coco_stuff import ZegotCocoStuff171
from zegot_jax.data.builders.context import ZegotContext59
from zegot_jax.data.builders.voc import ZegotVocAug

# Dataset key (as in class_names.DATASETS) -> builder class. TFDS names: `BUILDERS[k].name`.
BUILDERS: dict[str, type[SegmentationBuilder]] = {
    "voc": ZegotVocAug,
    "context": ZegotContext59,
    "coco_stuff": ZegotCocoStuff171,
    "ade20k": ZegotAde150,
}

__all__ = [
    "BUILDERS",
    "SegmentationBuilder",
    "ZegotAde150",
    "ZegotCocoStuff171",
    "ZegotContext59",
    "ZegotVocAug",
]
