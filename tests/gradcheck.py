"""Central differences: the reference for gradients in the OT tests (run them in float64)."""

import jax
import jax.numpy as jnp
import numpy as np


def central_differences(fn, s: jax.Array, h: float = 1e-6) -> np.ndarray:
    """`d fn / d s` by `(fn(s + h e) - fn(s - h e)) / 2h` for every entry of `s`."""
    fd = np.zeros(s.shape)
    for idx in np.ndindex(*s.shape):
        e = jnp.zeros(s.shape).at[idx].set(h)
        fd[idx] = (fn(s + e) - fn(s - e)) / (2 * h)
    return fd
