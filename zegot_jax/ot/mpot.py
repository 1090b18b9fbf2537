"""Multiple Prompt Optimal Transport (MPOT): pixels to text prompts through entropic OT.

For each problem (one image, one class, one layer) the similarities `S [M, N]` between `M` pixel
tokens and `N` prompts define the cost `C = 1 - S`. Entropic OT with uniform marginals (`1/M`
over pixels, `1/N` over prompts) gives the plan `T [M, N]`, and the refined per-pixel score is
`score[m] = sum_n M * N * T[m, n] * S[m, n]`. With a uniform plan this is `sum_n S[m, n]`: the
"no OT" ablation.

Forward: ott-jax's Sinkhorn (fixed iterations or a marginal-error threshold, log or kernel
domain) or a semi-dual Newton solve (`solvers.py`). Backward: `'implicit'` (`implicit.py`, exact
at convergence, `O(M N)` memory) or `'unrolled'` (autodiff through exactly the iterations that
ran; memory grows with the iteration count). Leading dimensions (`[L, B, K]` or any other) are
vmapped one by one, so a batch axis sharded over devices stays sharded.
"""

import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zegot_jax.ot import implicit, solvers

BACKWARDS = ("implicit", "unrolled")

# A balanced plan whose marginals are off by more than this (L1, out of a total of 2) did not
# converge: its score is not the OT score. Converged float32 solves are near 1e-6; the default
# Newton 10 and Sinkhorn 30 stay below 1e-2 on cosine similarities.
MARGINAL_ERROR_WARNING = 0.1
_warned: set[str] = set()  # the one-time messages already shown


class MPOTOutput(NamedTuple):
    """Result of `mpot`. `...` are the leading (batch) dimensions of the similarity.

    Attributes:
        score: refined score per pixel, `sum_n M * N * plan * S`, `[..., M]` (for unbalanced
            problems with the plan rescaled to unit total mass).
        plan: transport plan, `[..., M, N]`; sums to 1 per problem when balanced.
        entropy: entropy of the plan, `-sum T log T`, `[...]` (`log(M N)` for a uniform plan);
            a diagnostic, not differentiated.
        marginal_error: `||T 1 - 1/M||_1 + ||T^T 1 - 1/N||_1`, `[...]`. Near 0 when balanced and
            converged; intentionally positive for unbalanced problems.
        iterations: iterations (Newton: steps) the solver ran, `[...]` int32 (0 if `uniform`).
    """

    score: jax.Array
    plan: jax.Array
    entropy: jax.Array
    marginal_error: jax.Array
    iterations: jax.Array


def _check_args(epsilon, num_iterations, tau, solver, backward, domain, threshold) -> float:
    """Validates the scalar options of `mpot`; returns tau as a float (1.0 = balanced)."""
    if epsilon is None:
        raise ValueError("mpot: epsilon is required (ott's default 0.05*std(cost) is too small); "
                         "pass e.g. epsilon=0.05.")
    if isinstance(epsilon, jax.core.Tracer) or not float(epsilon) > 0:
        raise ValueError(f"mpot: epsilon must be > 0 (a Python float), got {epsilon!r}.")
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) \
            or num_iterations < 1:
        raise ValueError(f"mpot: num_iterations must be a positive int, got {num_iterations!r}.")
    tau = 1.0 if tau is None else float(tau)
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"mpot: tau must be in (0, 1] (1 or None = balanced), got {tau}.")
    solvers.get(solver)
    if backward not in BACKWARDS:
        raise ValueError(f"mpot: backward must be one of {BACKWARDS}, got {backward!r}.")
    if domain not in solvers.DOMAINS:
        raise ValueError(f"mpot: domain must be one of {solvers.DOMAINS}, got {domain!r}.")
    if not float(threshold) >= 0:
        raise ValueError(f"mpot: threshold must be >= 0 (0 = fixed iterations), got {threshold}.")
    if threshold > 0 and backward == "unrolled":
        raise ValueError("mpot: threshold > 0 stops in a while loop, which reverse mode cannot "
                         "unroll; use backward='implicit' or threshold=0.")
    return tau


def mpot(
    similarity: jax.Array,
    *,
    epsilon: float,
    num_iterations: int,
    tau: float | None = None,
    plan_gradient: bool = True,
    uniform: bool = False,
    solver: str = "sinkhorn",
    backward: str = "implicit",
    domain: str = "log",
    threshold: float = 0.0,
    dtype: jnp.dtype = jnp.float32,
) -> MPOTOutput:
    """Refines pixel-to-prompt similarities with entropic optimal transport.

    Args:
        similarity: `S [..., M, N]`, pixel-to-prompt cosine similarities (M pixels, N prompts).
        epsilon: entropic regularisation (> 0). Always explicit; OTSeg uses 0.05.
        num_iterations: Sinkhorn iterations (exactly this many when `threshold == 0`, else at
            most this many) or Newton steps.
        tau: None or 1.0 = balanced; in (0, 1) = unbalanced with ott's `tau_a = tau_b = tau`
            (`tau = rho / (rho + epsilon)` for a KL marginal penalty of weight `rho`).
        plan_gradient: if False, the plan is a constant for differentiation (PLOT-style); the score
            still differentiates through `S` linearly. If True, gradients flow through the solver.
        uniform: the no-OT ablation: `plan = 1 / (M N)`, `score = sum_n S` (no solver runs).
        solver: 'sinkhorn' (ott-jax) or 'newton' (semi-dual Newton, balanced only).
        backward: 'implicit' (exact at convergence, O(M N) memory per problem) or 'unrolled'
            (differentiates exactly the iterations that ran; needs `threshold == 0`).
        domain: Sinkhorn iterations in the 'log' domain, or the 'kernel' (scaling) domain when
            the cost range over epsilon leaves float32 headroom (see `solvers`): 'auto' falls
            back to log silently, 'kernel' with a one-time note on stderr.
        threshold: 0 = fixed iterations; > 0 = stop once ott's marginal error is below it.
        dtype: dtype of the cost, the solver and the outputs; float32 whatever the input dtype
            (bf16 inputs are upcast). float64 needs `jax_enable_x64` (tests).

    Returns:
        `MPOTOutput` with score `[..., M]`, plan `[..., M, N]`, entropy, marginal_error and
        iterations `[...]`.

    Raises:
        ValueError: on a bad option (see `_check_args`) or a similarity with fewer than 2
            dimensions.
    """
    tau = _check_args(epsilon, num_iterations, tau, solver, backward, domain, threshold)
    epsilon = float(epsilon)
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
    use_kernel = solvers.use_kernel_domain(jax.lax.stop_gradient(cost), epsilon, domain,
                                           tau)
    if domain == "kernel" and solver == "sinkhorn":
        jax.debug.callback(_note_kernel_fallback, use_kernel, epsilon)
    forward = solvers.get(solver)

    def solve_one(c, flag):
        return forward(c, flag, epsilon=epsilon, num_iterations=num_iterations, tau=tau,
                       threshold=threshold)

    if backward == "implicit":
        def solve(c, flag):
            return implicit.implicit_plan(solve_one, epsilon, tau, c, flag)
    else:
        solve = solve_one
    # One vmap per leading dimension rather than a reshape to [P, M, N]: a reshape merges a sharded
    # batch axis with the others and makes every device solve every problem. The kernel/log flag
    # is one scalar for the batch (in_axes None), so the branch stays a branch.
    for _ in lead:
        solve = jax.vmap(solve, in_axes=(0, None))
    plan, iterations = solve(cost, use_kernel)
    return _outputs(s, plan, iterations, tau)


def _outputs(s: jax.Array, plan: jax.Array, iterations: jax.Array, tau: float) -> MPOTOutput:
    """Score and diagnostics from the similarity `[..., M, N]` and the plan."""
    m, n = s.shape[-2:]
    # Unbalanced plans carry less (or more) than unit mass, often far less when the cost is high
    # everywhere; the score uses the plan rescaled to unit mass so it stays on the balanced scale
    # (a no-op for balanced plans). The returned plan is the solver's, unscaled.
    weights = plan if tau >= 1.0 else plan / jnp.maximum(plan.sum((-1, -2), keepdims=True), 1e-30)
    score = (m * n) * jnp.einsum("...mn,...mn->...m", weights, s)
    fixed = jax.lax.stop_gradient(plan)
    entropy = -jnp.sum(jax.scipy.special.xlogy(fixed, fixed), axis=(-2, -1))
    marginal_error = (jnp.abs(fixed.sum(-1) - 1.0 / m).sum(-1)
                      + jnp.abs(fixed.sum(-2) - 1.0 / n).sum(-1))
    return MPOTOutput(score, plan, entropy, marginal_error, iterations)


def warn_if_unconverged(marginal_error: float | None, where: str) -> None:
    """Prints one warning per process the first time a balanced plan's marginal error (a host
    float, e.g. `ZegOTOutput.ot_marginal_error`) exceeds `MARGINAL_ERROR_WARNING` or is NaN."""
    if marginal_error is None or "marginal" in _warned or marginal_error <= MARGINAL_ERROR_WARNING:
        return  # NaN goes on to the warning
    _warned.add("marginal")
    print(f"warning: MPOT did not converge ({where}: a plan's marginal error is "
          f"{marginal_error:.3g}, above {MARGINAL_ERROR_WARNING}); its scores are not the OT "
          "scores. Raise model.ot.epsilon or model.ot.newton_steps / num_iterations (similarities "
          "far beyond [-1, 1] need a larger epsilon). Shown once.", file=sys.stderr, flush=True)


def _note_kernel_fallback(kernel, epsilon: float) -> None:
    """Host callback: says once that domain='kernel' ran log-domain iterations instead."""
    if np.all(np.asarray(kernel) > 0) or "kernel" in _warned:
        return
    _warned.add("kernel")
    print(f"note: model.ot.domain='kernel' ran log-domain iterations instead: the cost range "
          f"over epsilon={epsilon} exceeds {solvers.KERNEL_MAX_RANGE}, where kernel-domain "
          "iterations overflow float32. Use domain='auto' (the same choice, silently) or a larger "
          "epsilon. Shown once.", file=sys.stderr, flush=True)
