"""The built-in transports 'sinkhorn' and 'newton', registered like any other (`registry.py`).

Each solves one pixel-to-prompt problem, `cost [M, N] -> (plan [M, N], iterations [])`; both
are declared balanced-entropic, so `backward='implicit'` differentiates them exactly.

- `sinkhorn`: ott-jax's Sinkhorn with uniform marginals, either exactly `num_iterations`
  iterations (a fixed-length scan, which the unrolled backward needs) or, with `threshold > 0`,
  until ott's marginal error falls below it (checked every `CHECK_EVERY` iterations, at most
  `num_iterations`). Log-domain or kernel-domain (scaling) iterations; see `use_kernel_domain`.
- `newton`: a semi-dual Newton solve for small N (balanced only). With `f` eliminated,
  `f(g) = eps log a - eps LSE_n((g_n - C_mn) / eps)` makes every row sum exact; the concave
  semi-dual `J(g) = <a, f(g)> + <b, g>` has gradient `b - P^T 1` and Hessian `-K / eps` with the
  same N x N matrix `K = diag(P^T 1) - P^T diag(1/a) P` as the implicit backward, so each step is
  `g += t eps (K + mu I + c 1 1^T)^{-1} (b - P^T 1)` (c = 1 / N^2 removes the gauge direction 1,
  along which the gradient has no component; mu and t: see `NEWTON_DAMPING`, `LINE_SEARCH`). It
  starts from one Sinkhorn update of `g` and runs a fixed number of steps; each step costs about
  half a log-domain Sinkhorn iteration (one exponential per cell, a Cholesky solve of the SPD
  N x N system (`spd.py`), the line search only products with the plan).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from zegot_jax.ot import registry, spd

# With threshold > 0, ott checks the marginal error every this many iterations.
CHECK_EVERY = 5
# Kernel-domain iterations are used ('auto') when every problem's cost range over epsilon is at
# most this: the kernel exp(-(C - min C) / eps) then stays above exp(-30) ~ 1e-13, and the
# scalings stay many orders of magnitude inside float32's range (exp(+-88)).
KERNEL_MAX_RANGE = 30.0

# Newton's globalisation (numerics, not method hyper-parameters): a Levenberg-Marquardt term
# NEWTON_DAMPING * ||gradient||_1 on the diagonal (it vanishes at the solution, so the fixed point
# is unchanged), and of the step lengths LINE_SEARCH the one with the largest semi-dual value
# (0 included, so no step lowers it). Undamped full steps diverged on the similarities of a
# trained synthetic run (prompts that no pixel prefers start with almost no mass).
NEWTON_DAMPING = 0.01
LINE_SEARCH = (1.0, 0.5, 0.25, 0.125, 0.0)

DOMAINS = ("log", "kernel", "auto")


def use_kernel_domain(cost: jax.Array, epsilon: float, domain: str, tau: float) -> jax.Array:
    """A float scalar (1 or 0): run kernel-domain iterations for all problems in `cost [..., M, N]`.

    'log': never; 'auto' and 'kernel': when the cost range over epsilon is at most
    `KERNEL_MAX_RANGE`.

    One decision for the whole batch, taken outside the vmap, so it stays a real branch (a
    per-problem choice under vmap would run both solvers). Balanced problems are solved on the
    cost minus its minimum (see `sinkhorn_plan`), unbalanced ones on the cost as given.
    """
    if domain == "log":
        return jnp.zeros((), jnp.float32)
    # 'kernel' too: kernel-domain iterations outside this range under- or overflow float32
    # (a plan of total mass 7e20 and NaN gradients at epsilon 1e-3); `mpot` notes the fallback.
    low = jnp.min(cost, axis=(-2, -1)) if tau >= 1.0 else jnp.zeros(cost.shape[:-2], cost.dtype)
    spread = jnp.max(jnp.abs(cost - low[..., None, None]), axis=(-2, -1))
    return (jnp.max(spread) / epsilon <= KERNEL_MAX_RANGE).astype(jnp.float32)


def sinkhorn_plan(
    cost: jax.Array, kernel: jax.Array, *, epsilon: float, num_iterations: int, tau: float, threshold: float
) -> tuple[jax.Array, jax.Array]:
    """ott Sinkhorn on `cost [M, N]`; log or kernel domain by the scalar `kernel` (1 = kernel)."""
    if tau >= 1.0:
        # A balanced plan does not change when a constant is subtracted from the cost (an
        # unbalanced one does); the kernel then peaks at exactly 1.
        cost = cost - jax.lax.stop_gradient(jnp.min(cost))

    def run(lse_mode: bool):
        return lambda c: _ott_sinkhorn(
            c, lse_mode, epsilon=epsilon, tau=tau, num_iterations=num_iterations, threshold=threshold
        )

    return jax.lax.cond(kernel > 0, run(False), run(True), cost)


def _ott_sinkhorn(cost, lse_mode, *, epsilon, tau, num_iterations, threshold):
    geom = geometry.Geometry(cost_matrix=cost, epsilon=epsilon)
    problem = linear_problem.LinearProblem(geom, tau_a=tau, tau_b=tau)
    if threshold > 0:
        every = min(CHECK_EVERY, num_iterations)
        solver = sinkhorn.Sinkhorn(
            lse_mode=lse_mode,
            implicit_diff=None,
            min_iterations=0,
            max_iterations=num_iterations - num_iterations % every,
            inner_iterations=every,
            threshold=threshold,
        )
    else:
        solver = unrolled_sinkhorn(num_iterations, lse_mode=lse_mode)
    out = solver(problem)
    return out.matrix, out.n_iters.astype(jnp.int32)


def unrolled_sinkhorn(iterations: int, *, lse_mode: bool = True) -> sinkhorn.Sinkhorn:
    """ott-jax's Sinkhorn for exactly `iterations` iterations, differentiated through them.

    inner_iterations == iterations is required for the unrolled backward, not a tuning choice:
    ott runs max_iterations // inner_iterations outer steps, and ott 0.6.0's unrolled backward
    for min == max (fixed_point_loop.fixpoint_iter_bwd with force_scan) walks its checkpoints
    from index 0 downwards instead of from the last one, so with more than one outer step the
    gradient is wrong (max error 28 on gradients of size 3 at inner_iterations=1). With one outer
    step it is exact, and the backward keeps every iteration's residuals.
    """
    return sinkhorn.Sinkhorn(
        lse_mode=lse_mode,
        implicit_diff=None,
        min_iterations=iterations,
        max_iterations=iterations,
        inner_iterations=iterations,
    )


def newton_plan(
    cost: jax.Array, kernel: jax.Array, *, epsilon: float, num_iterations: int, tau: float, threshold: float
) -> tuple[jax.Array, jax.Array]:
    """Semi-dual Newton on `cost [M, N]` (balanced): `num_iterations` steps; `kernel` is unused.

    Works on the transposed cost `[N, M]`, so that the long pixel axis is the one XLA vectorises
    (with N = 4 minor, most of each vector register was idle), and forms the plan with one
    exponential per cell: `exp((g_n - C_mn) / eps)` normalised per pixel is the plan at
    `f(g)`, without the log-sum-exp that `f` itself would cost.
    """
    del kernel, threshold
    if tau < 1.0:
        raise ValueError(
            "model.ot.solver='newton' solves balanced problems only (tau = 1); use "
            "solver='sinkhorn' for tau < 1."
        )
    m, n = cost.shape
    scaled = cost.T / epsilon  # [N, M]
    steps = jnp.asarray(LINE_SEARCH, cost.dtype)

    def plan_of(g):  # [N] -> the plan [N, M] whose every pixel column sums to 1/M
        z = g[:, None] / epsilon - scaled
        e = jnp.exp(z - jnp.max(z, axis=0, keepdims=True))
        return e / (m * jnp.sum(e, axis=0, keepdims=True))

    def step(g, _):
        plan = plan_of(g)
        columns = plan.sum(1)
        gradient = 1.0 / n - columns
        damping = NEWTON_DAMPING * jnp.sum(jnp.abs(gradient))
        system = (jnp.diag(columns + damping) - m * plan @ plan.T) + 1.0 / n**2
        direction = epsilon * spd.solve(system, gradient)
        direction = jnp.where(jnp.isfinite(direction), direction, 0.0)
        gains = _semi_dual_gains(m * plan, direction, steps, epsilon)
        best = jnp.argmax(jnp.where(jnp.isfinite(gains), gains, -jnp.inf))
        return g + steps[best] * direction, None

    g = -epsilon * jnp.log(n) - epsilon * jax.nn.logsumexp(-scaled, axis=1)
    g, _ = jax.lax.scan(step, g, None, length=num_iterations)
    return plan_of(g).T, jnp.asarray(num_iterations, jnp.int32)


def _semi_dual_gains(weights: jax.Array, direction: jax.Array, steps: jax.Array, epsilon: float) -> jax.Array:
    """`J(g + t d) - J(g)` for each step length t `[T]`, accurate in float32 near the optimum.

    With the pixel-normalised plan `w = M P^T [N, M]` at g, `f_m(g + t d) - f_m(g) = -eps log
    sum_n w_nm exp(t d_n / eps)`, so the gain is `t mean(d) - eps mean_m log1p(sum_n w_nm
    expm1(t d_n / eps))`: no log-sum-exp over the cost, and no cancellation between two nearly
    equal values of J (which float32 cannot tell apart once the step is small).
    """
    growth = jnp.expm1(steps[:, None] * direction[None, :] / epsilon)  # [T, N]
    return steps * jnp.mean(direction) - epsilon * jnp.mean(jnp.log1p(growth @ weights), axis=1)


def _sinkhorn(problem: registry.Problem, settings: registry.Settings):
    """'sinkhorn' as a registered transport: `problem.shared` is the kernel/log flag."""
    plan, iterations = sinkhorn_plan(
        problem.cost,
        problem.shared,
        epsilon=settings.epsilon,
        num_iterations=settings.num_iterations,
        tau=settings.tau,
        threshold=settings.threshold,
    )
    return plan, {"iterations": iterations}


def _kernel_flag(similarity: jax.Array, settings: registry.Settings) -> jax.Array:
    """'sinkhorn''s `prepare`: one kernel/log decision for the batch `[..., M, N]`."""
    flag = use_kernel_domain(1.0 - similarity, settings.epsilon, settings.domain, settings.tau)
    if settings.domain == "kernel":
        jax.debug.callback(_note_kernel_fallback, flag, settings.epsilon)
    return flag


_noted: set[str] = set()  # one-time notes already shown by this process


def _note_kernel_fallback(kernel, epsilon: float) -> None:
    """Host callback: says once that domain='kernel' ran log-domain iterations instead."""
    if np.all(np.asarray(kernel) > 0) or "kernel" in _noted:
        return
    _noted.add("kernel")
    print(
        f"note: model.ot.domain='kernel' ran log-domain iterations instead: the cost range "
        f"over epsilon={epsilon} exceeds {KERNEL_MAX_RANGE}, where kernel-domain iterations "
        "overflow float32. Use domain='auto' (the same choice, silently) or a larger epsilon. "
        "Shown once.",
        file=sys.stderr,
        flush=True,
    )


def _newton(problem: registry.Problem, settings: registry.Settings):
    """'newton' as a registered transport (`settings.num_iterations` Newton steps)."""
    plan, iterations = newton_plan(
        problem.cost,
        None,
        epsilon=settings.epsilon,
        num_iterations=settings.num_iterations,
        tau=settings.tau,
        threshold=settings.threshold,
    )
    return plan, {"iterations": iterations}


registry.register_transport(
    "sinkhorn", _sinkhorn, balanced_entropic=True, options={}, prepare=_kernel_flag, builtin=True
)
registry.register_transport("newton", _newton, balanced_entropic=True, options={}, builtin=True)
