"""The embedded default: ZegOT on the laptop-scale synthetic world, end to end on a CPU.

  python train.py --config=configs/synthetic.py --workdir=runs/synthetic

The config is `zegot_jax/configs/synthetic.py` (packaged, so notebooks run from an installed wheel;
its docstring gives the numbers this run should reach); `:smoke` is the same path at test size.
"""

from zegot_jax.configs import common  # noqa: F401 (`synthetic.common`, as before)
from zegot_jax.configs.synthetic import get_config  # noqa: F401
