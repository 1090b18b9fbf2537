"""Multiple Prompt Optimal Transport (MPOT): pixels to text prompts through entropic OT.

For each problem (one image, one class, one layer) the similarities `S [M, N]` between `M` pixel
tokens and `N` prompts define the cost `C = 1 - S`. An entropic, log-domain Sinkhorn solver (ott-jax)
with uniform marginals (`1/M` over pixels, `1/N` over prompts) gives the plan `T [M, N]`, and the
refined per-pixel score is `score[m] = sum_n M * N * T[m, n] * S[m, n]`. With a uniform plan this is
`sum_n S[m, n]`: the "no OT" ablation.

The solver always runs exactly `num_iterations` Sinkhorn iterations as a fixed-length scan (ott's
`min_iterations == max_iterations`), so it vmaps over many problems and differentiates in reverse
mode, either unrolled (exactly what ran; memory grows with the iteration count, see `_solve_one`
for an ott 0.6.0 bug that rules out ott's checkpointing) or implicitly (memory-light, assumes
convergence). Leading dimensions (`[L, B, K]` or any other) are vmapped one by one, so a batch axis sharded
over devices stays sharded.

`sinkhorn_log_reference` is a plain JAX loop for the same computation: a test oracle and the
baseline of `benchmarks/mpot.py`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import implicit_differentiation, sinkhorn


class MPOTOutput(NamedTuple):
    """Result of `mpot`. `...` are the leading (batch) dimensions of the similarity.

    Attributes:
        score: refined score per pixel, `sum_n M * N * plan * S`, `[..., M]` (for unbalanced
            problems with the plan rescaled to unit total mass).
        plan: transport plan, `[..., M, N]`; sums to 1 per problem when balanced.
        entropy: entropy of the plan, `-sum T log T`, `[...]` (`log(M N)` for a uniform plan).
        marginal_error: `||T 1 - 1/M||_1 + ||T^T 1 - 1/N||_1`, `[...]`. Near 0 when balanced and
            converged; intentionally positive for unbalanced problems.
        iterations: Sinkhorn iterations the solver ran, `[...]` int32 (0 for `uniform=True`).
    """

    score: jax.Array
    plan: jax.Array
    entropy: jax.Array
    marginal_error: jax.Array
    iterations: jax.Array


# Ridge added to the implicit (balanced) linear system. Without it lineax's CG failed on 72 of 80
# float32 problems (M=1024, N=4, epsilon 0.01-0.05); with 1e-3 on none, and the gradients matched
# the unrolled ones to 4e-5 (relative) at epsilon 0.05, 100 iterations.
_IMPLICIT_RIDGE = 1e-3


def _identity(z: jax.Array) -> jax.Array:
    return z


def _check_args(epsilon: float, num_iterations: int, tau: float | None) -> float:
    """Validates the scalar options of `mpot`; returns tau as a float (1.0 = balanced)."""
    if epsilon is None:
        raise ValueError("mpot: epsilon is required (ott's default 0.05*std(cost) is too small); "
                         "pass e.g. epsilon=0.05.")
    if not isinstance(epsilon, jax.core.Tracer) and not float(epsilon) > 0:
        raise ValueError(f"mpot: epsilon must be > 0, got {epsilon}.")
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) \
            or num_iterations < 1:
        raise ValueError(f"mpot: num_iterations must be a positive int, got {num_iterations!r}.")
    tau = 1.0 if tau is None else float(tau)
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"mpot: tau must be in (0, 1] (1 or None = balanced), got {tau}.")
    return tau


def _solve_one(
    cost: jax.Array, *, epsilon: float, num_iterations: int, tau: float, implicit_diff: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Solves one problem with ott. `cost [M, N]` -> (plan [M, N], entropy [], iterations [])."""
    geom = geometry.Geometry(cost_matrix=cost, epsilon=epsilon)
    problem = linear_problem.LinearProblem(geom, tau_a=tau, tau_b=tau)
    if implicit_diff:
        # Identity preconditioning makes the linear system symmetric (ott ignores `symmetric`
        # without a precondition_fun). A balanced system is singular along (1, -1); without the
        # ridge_kernel term lineax's CG returned non-finite output on most float32 problems.
        ridge = {"ridge_kernel": _IMPLICIT_RIDGE} if tau == 1.0 else {}
        implicit = implicit_differentiation.ImplicitDiff(
            symmetric=True, precondition_fun=_identity, solver_kwargs=ridge)
    else:
        implicit = None
    # inner_iterations == num_iterations is required, not a tuning choice:
    # - ott runs max_iterations // inner_iterations outer steps, so a value that does not divide
    #   num_iterations silently runs fewer iterations;
    # - ott 0.6.0's unrolled backward for min == max (fixed_point_loop.fixpoint_iter_bwd with
    #   force_scan) walks its checkpoints from index 0 downwards instead of from the last one, so
    #   with more than one outer step the gradient is wrong (e.g. max error 28 on gradients of
    #   size 3 at inner_iterations=1). With one outer step it is exact; the price is that the
    #   backward keeps every iteration's residuals (no checkpointing), see benchmarks/mpot.py.
    # With min == max the marginal error is computed once, at the last iteration.
    solver = sinkhorn.Sinkhorn(
        lse_mode=True,
        min_iterations=num_iterations,
        max_iterations=num_iterations,
        inner_iterations=num_iterations,
        implicit_diff=implicit,
    )
    out = solver(problem)
    plan = out.matrix
    # log T = (f + g - C) / eps, so the entropy needs no log of (possibly underflowed) plan cells.
    entropy = jnp.sum(plan * (cost - out.f[:, None] - out.g[None, :])) / epsilon
    return plan, entropy, out.n_iters.astype(jnp.int32)


def mpot(
    similarity: jax.Array,
    *,
    epsilon: float,
    num_iterations: int,
    tau: float | None = None,
    plan_gradient: bool = True,
    uniform: bool = False,
    implicit_diff: bool = False,
    dtype: jnp.dtype = jnp.float32,
) -> MPOTOutput:
    """Refines pixel-to-prompt similarities with entropic optimal transport.

    Args:
        similarity: `S [..., M, N]`, pixel-to-prompt cosine similarities (M pixels, N prompts).
        epsilon: entropic regularisation (> 0). Always explicit; OTSeg uses 0.05.
        num_iterations: exact number of Sinkhorn iterations (a fixed-length scan, no early exit).
        tau: None or 1.0 = balanced; in (0, 1) = unbalanced with ott's `tau_a = tau_b = tau`
            (`tau = rho / (rho + epsilon)` for a KL marginal penalty of weight `rho`).
        plan_gradient: if False, the plan is a constant for differentiation (PLOT-style); the score
            still differentiates through `S` linearly. If True, gradients flow through the solver.
        uniform: the no-OT ablation: `plan = 1 / (M N)`, `score = sum_n S` (no solver runs).
        implicit_diff: differentiate the solver implicitly (ott `ImplicitDiff`, identity
            preconditioning, a small ridge when balanced) instead of unrolling the iterations.
            Implicit needs O(M N) memory per problem instead of O(num_iterations M N) and assumes
            the solver has converged; unrolled (the default) differentiates exactly what ran.
        dtype: dtype of the cost, the solver and the outputs; float32 whatever the input dtype
            (bf16 inputs are upcast). float64 needs `jax_enable_x64` (tests).

    Returns:
        `MPOTOutput` with score `[..., M]`, plan `[..., M, N]`, entropy, marginal_error and
        iterations `[...]`.

    Raises:
        ValueError: on a missing or non-positive epsilon, a bad iteration count or tau, or a
            similarity with fewer than 2 dimensions.
    """
    tau = _check_args(epsilon, num_iterations, tau)
    s = jnp.asarray(similarity)
    if s.ndim < 2:
        raise ValueError(f"mpot: similarity must be [..., M, N], got shape {s.shape}.")
    s = s.astype(dtype)
    *lead, m, n = s.shape
    if uniform:
        plan = jnp.full(s.shape, 1.0 / (m * n), dtype)
        zeros = jnp.zeros(lead, dtype)
        entropy = jnp.full(lead, jnp.log(m * n), dtype)
        return MPOTOutput(s.sum(-1), plan, entropy, zeros, jnp.zeros(lead, jnp.int32))

    cost = 1.0 - s
    if not plan_gradient:
        cost = jax.lax.stop_gradient(cost)
    def solve(c):
        return _solve_one(c, epsilon=epsilon, num_iterations=num_iterations, tau=tau,
                          implicit_diff=implicit_diff)

    # One vmap per leading dimension rather than a reshape to [P, M, N]: a reshape merges a sharded
    # batch axis with the others and makes every device solve every problem.
    for _ in lead:
        solve = jax.vmap(solve)
    plan, entropy, iterations = solve(cost)
    # Unbalanced plans carry less (or more) than unit mass, often far less when the cost is high
    # everywhere; the score uses the plan rescaled to unit mass so it stays on the balanced scale
    # (a no-op for balanced plans). The returned plan is the solver's, unscaled.
    weights = plan if tau >= 1.0 else plan / jnp.maximum(plan.sum((-1, -2), keepdims=True), 1e-30)
    score = (m * n) * jnp.einsum("...mn,...mn->...m", weights, s)
    marginal_error = (jnp.abs(plan.sum(-1) - 1.0 / m).sum(-1)
                      + jnp.abs(plan.sum(-2) - 1.0 / n).sum(-1))
    return MPOTOutput(score, plan, entropy, marginal_error, iterations)


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
        g = tau * (epsilon * log_b
                   - epsilon * jax.nn.logsumexp((f[..., :, None] - cost) / epsilon, axis=-2))
        f = tau * (epsilon * log_a
                   - epsilon * jax.nn.logsumexp((g[..., None, :] - cost) / epsilon, axis=-1))
        return (f, g), None

    if remat:
        step = jax.checkpoint(step)
    (f, g), _ = jax.lax.scan(step, (f, g), None, length=num_iterations)
    return jnp.exp((f[..., :, None] + g[..., None, :] - cost) / epsilon)
