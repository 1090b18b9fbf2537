"""Re-exports `zegot_jax/configs/coco.py`, whose docstring gives the commands and the numbers.

This is the file `train.py --config=configs/coco.py` reads; the config itself lives in the package,
so that an installed wheel has it too.
"""

from zegot_jax.configs.coco import get_config  # noqa: F401
