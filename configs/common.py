"""Shared defaults for every experiment: `zegot_jax/configs/common.py`, re-exported here.

The code lives in the package so that notebooks run from an installed wheel; every experiment file
in this folder starts from `common.get_config()` and changes only what differs.
"""

from zegot_jax.configs.common import (  # noqa: F401
    TEMPLATES,
    VARIANT_ARGS,
    apply_smoke,
    apply_variants,
    get_config,
    parse_arg,
    use_transport,
)
