"""Exact implicit backward of an entropic OT plan: `O(M N)` memory, nothing stored per iteration.

The plan of entropic OT with cost `C [M, N]` is `P = exp((f 1^T + 1 g^T - C) / eps)` at the
potentials that satisfy the marginal conditions. Differentiating those conditions (the implicit
function theorem; Eisenberger et al., "A Unified Framework for Implicit Sinkhorn Differentiation",
CVPR 2022) gives, for a loss `L(P)` with `G = dL/dP` and `E = P * G`,

    [diag(a) / tau   P             ] [alpha]   [E 1  ]
    [P^T             diag(b) / tau ] [beta ] = [E^T 1],      dL/dC = -(1/eps) P * (G - alpha 1^T - 1 beta^T),

with `a = P 1` and `b = P^T 1` the plan's own sums and `tau` the marginal relaxation (1 balanced,
`tau_a = tau_b = tau` as in ott; for tau < 1 the KL fixed point `log(P 1) = log a - (1 - tau) f /
(tau eps)` adds `(1/tau - 1) diag(a)` to the balanced diagonal). Eliminating `alpha` leaves the
N x N Schur complement

    K beta = E^T 1 - tau P^T (E 1 / a),   K = diag(b) / tau - tau P^T diag(1 / a) P,
    alpha = tau (E 1 - P beta) / a,

which for a handful of prompts is a tiny dense solve per problem. Balanced (tau = 1), `K 1 = 0`
exactly (with the plan's own sums) and the right-hand side sums to 0, so `K + c 1 1^T` (c = mean(b)
/ N, which puts the eigenvalue along 1 on the scale of the others) has the same solution on the
complement of 1 and no bias: the gauge shift `alpha + t, beta - t` leaves `dL/dC` unchanged.
"""

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zegot_jax.ot import spd

Solve = Callable[[jax.Array, Any], tuple[jax.Array, Any]]


def plan_cotangent_to_cost(plan: jax.Array, plan_grad: jax.Array, *, epsilon: float, tau: float) -> jax.Array:
    """dL/dC `[M, N]` from the plan `P [M, N]` and dL/dP `[M, N]` (see the module docstring)."""
    a, b = plan.sum(1), plan.sum(0)
    safe_a = jnp.where(a > 0, a, 1.0)  # an all-zero row carries no mass: alpha_i drops out
    e = plan * plan_grad
    e_rows, e_cols = e.sum(1), e.sum(0)
    n = plan.shape[1]
    schur = jnp.diag(b / tau) - tau * jnp.einsum("mi,m,mj->ij", plan, 1.0 / safe_a, plan)
    if tau >= 1.0:
        schur = schur + jnp.mean(b) / n
    rhs = e_cols - tau * plan.T @ (e_rows / safe_a)
    beta = spd.solve(schur, rhs)
    alpha = tau * (e_rows - plan @ beta) / safe_a
    return -(plan * (plan_grad - alpha[:, None] - beta[None, :])) / epsilon


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def implicit_plan(
    solve: Solve, epsilon: float, tau: float, similarity: jax.Array, shared: Any
) -> tuple[jax.Array, Any]:
    """`solve(similarity, shared) -> (plan [M, N], aux)`, differentiated implicitly in `S [M, N]`.

    The cost is `C = 1 - S`, so `dL/dS = -dL/dC`. `shared` (any pytree, e.g. the kernel/log flag)
    and `aux` (diagnostics such as the iteration count) get no gradient. The forward runs `solve`
    as given (any iteration count or stopping rule); the backward uses only the plan it returned,
    so it is exact at convergence whatever the solver did to get there.
    """
    return solve(similarity, shared)


def _forward(solve, epsilon, tau, similarity, shared):
    plan, aux = solve(similarity, shared)
    return (plan, aux), (plan, shared)


def _zero_cotangent(x: Any) -> Any:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)


def _backward(solve, epsilon, tau, residuals, cotangents):
    plan, shared = residuals
    plan_grad, _ = cotangents  # diagnostics (iteration counts, ...) carry no gradient
    cost_grad = plan_cotangent_to_cost(plan, plan_grad, epsilon=epsilon, tau=tau)
    return -cost_grad, jax.tree.map(_zero_cotangent, shared)


implicit_plan.defvjp(_forward, _backward)
