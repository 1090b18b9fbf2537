"""Re-exports `zegot_jax/configs/ade.py`, whose docstring gives the commands and the numbers.

This is the file `train.py --config=configs/ade.py` reads; the config itself lives in the package,
so that an installed wheel has it too.
"""

from zegot_jax.configs.ade import get_config  # noqa: F401
