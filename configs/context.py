"""Re-exports `zegot_jax/configs/context.py`, whose docstring gives the commands and the numbers.

This is the file `train.py --config=configs/context.py` reads; the config itself lives in the package,
so that an installed wheel has it too.
"""

from zegot_jax.configs.context import get_config  # noqa: F401
