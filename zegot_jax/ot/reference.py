"""A plain fixed-iteration log-domain Sinkhorn loop: the test oracle and benchmark baseline."""

import jax
import jax.numpy as jnp


def sinkhorn_log_reference(
    cost: jax.Array,
    *,
    epsilon: float,
    num_iterations: int,
    tau: float = 1.0,
    remat: bool = False,
) -> jax.Array:
    """Plain fixed-iteration log-domain Sinkhorn with uniform marginals (oracle and baseline).

    Same update order as ott (g first, then f) from zero potentials:
    `g = tau * (eps log b - eps LSE_m((f_m - C_mn) / eps))`,
    `f = tau * (eps log a - eps LSE_n((g_n - C_mn) / eps))`.

    Args:
        cost: `C [..., M, N]`; leading dimensions are handled by broadcasting.
        epsilon: entropic regularisation (> 0).
        num_iterations: number of iterations (a `lax.scan`, reverse-differentiable).
        tau: 1.0 = balanced, in (0, 1) = unbalanced (ott's convention).
        remat: recompute each iteration in the backward pass (`jax.checkpoint`), so reverse mode
            stores only the potentials per iteration instead of `[..., M, N]` residuals.

    Returns:
        The plan `exp((f + g - C) / eps)`, `[..., M, N]`.
    """
    m, n = cost.shape[-2:]
    log_a, log_b = -jnp.log(m), -jnp.log(n)
    f = jnp.zeros(cost.shape[:-1], cost.dtype)
    g = jnp.zeros(cost.shape[:-2] + (n,), cost.dtype)

    def step(carry, _):
        f, g = carry
        g = tau * (epsilon * log_b - epsilon * jax.nn.logsumexp((f[..., :, None] - cost) / epsilon, axis=-2))
        f = tau * (epsilon * log_a - epsilon * jax.nn.logsumexp((g[..., None, :] - cost) / epsilon, axis=-1))
        return (f, g), None

    if remat:
        step = jax.checkpoint(step)
    (f, g), _ = jax.lax.scan(step, (f, g), None, length=num_iterations)
    return jnp.exp((f[..., :, None] + g[..., None, :] - cost) / epsilon)
