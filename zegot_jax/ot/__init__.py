"""MPOT: entropic optimal transport of pixels to text prompts (`mpot`), its solvers and backward.

`mpot.py` is the public function; `solvers.py` the forward solvers (ott-jax Sinkhorn, semi-dual
Newton); `implicit.py` the exact implicit backward; `reference.py` a plain loop used as a test
oracle and benchmark baseline.
"""

from zegot_jax.ot.mpot import BACKWARDS, MARGINAL_ERROR_WARNING, MPOTOutput, mpot, warn_if_unconverged
from zegot_jax.ot.reference import sinkhorn_log_reference
from zegot_jax.ot.solvers import DOMAINS, SOLVERS

__all__ = ["BACKWARDS", "DOMAINS", "MARGINAL_ERROR_WARNING", "MPOTOutput", "SOLVERS", "mpot",
           "sinkhorn_log_reference", "warn_if_unconverged"]
