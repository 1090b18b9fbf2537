"""Multiple Prompt Optimal Transport (MPOT): pixels to text prompts through entropic OT.

For each problem (one image, one class, one layer) the similarities `S [M, N]` between `M` pixel
tokens and `N` prompts define the cost `C = 1 - S`. Entropic OT with uniform marginals (`1/M`
over pixels, `1/N` over prompts) gives the plan `T [M, N]`, and the refined per-pixel score is
`score[m] = sum_n M * N * T[m, n] * S[m, n]`. With a uniform plan this is `sum_n S[m, n]`: the
"no OT" ablation.

Forward: the transport registered under `solver` (`registry.py`): the built-in ott-jax Sinkhorn
(fixed iterations or a marginal-error threshold, log or kernel domain) or semi-dual Newton solve
(`solvers.py`), or any user transport. Backward: `'implicit'` (`implicit.py`, exact at
convergence, `O(M N)` memory) for transports declared balanced-entropic, autodiff through the
transport otherwise; `'unrolled'`: autodiff always (for the built-ins exactly the iterations that
ran; memory grows with the iteration count). Leading dimensions (`[L, B, K]` or any other) are
vmapped one by one, so a batch axis sharded over devices stays sharded.
"""

import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from zegot_jax.ot import implicit, registry, solvers

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
        iterations: iterations (Newton: steps) the solver ran, `[...]` int32 (0 if `uniform` or
            the transport does not report them).
        diagnostics: the transport's other diagnostics, name -> `[..., *shape]` (may be empty).
    """

    score: jax.Array
    plan: jax.Array
    entropy: jax.Array
    marginal_error: jax.Array
    iterations: jax.Array
    diagnostics: dict[str, jax.Array] | None = None


def _check_args(epsilon, num_iterations, tau, solver, backward, domain, threshold) -> float:
    """Validates the scalar options of `mpot`; returns tau as a float (1.0 = balanced)."""
    if epsilon is None:
        raise ValueError(
            "mpot: epsilon is required (ott's default 0.05*std(cost) is too small); pass e.g. epsilon=0.05."
        )
    if isinstance(epsilon, jax.core.Tracer) or not float(epsilon) > 0:
        raise ValueError(f"mpot: epsilon must be > 0 (a Python float), got {epsilon!r}.")
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 1:
        raise ValueError(f"mpot: num_iterations must be a positive int, got {num_iterations!r}.")
    tau = 1.0 if tau is None else float(tau)
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"mpot: tau must be in (0, 1] (1 or None = balanced), got {tau}.")
    registry.get_transport(solver)
    if backward not in BACKWARDS:
        raise ValueError(f"mpot: backward must be one of {BACKWARDS}, got {backward!r}.")
    if domain not in solvers.DOMAINS:
        raise ValueError(f"mpot: domain must be one of {solvers.DOMAINS}, got {domain!r}.")
    if not float(threshold) >= 0:
        raise ValueError(f"mpot: threshold must be >= 0 (0 = fixed iterations), got {threshold}.")
    if problem := threshold_problem(threshold, backward):
        raise ValueError(f"mpot: {problem}")
    return tau


def threshold_problem(threshold: float, backward: str) -> str | None:
    """Why a convergence `threshold` cannot go with `backward` (None when it can)."""
    if threshold > 0 and backward == "unrolled":
        return (
            "threshold > 0 stops in a while loop, which reverse mode cannot unroll; use "
            "backward='implicit' or threshold=0."
        )
    return None


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
    options: Mapping[str, Any] | None = None,
    grid: tuple[int, int] | None = None,
    pixels: jax.Array | None = None,
    prompts: jax.Array | None = None,
) -> MPOTOutput:
    """Refines pixel-to-prompt similarities with optimal transport.

    Args:
        similarity: `S [..., M, N]`, pixel-to-prompt cosine similarities (M pixels, N prompts).
        epsilon: entropic regularisation (> 0). Always explicit; OTSeg uses 0.05.
        num_iterations: Sinkhorn iterations (exactly this many when `threshold == 0`, else at
            most this many) or Newton steps; a user transport reads it as its iteration budget.
        tau: None or 1.0 = balanced; in (0, 1) = unbalanced with ott's `tau_a = tau_b = tau`
            (`tau = rho / (rho + epsilon)` for a KL marginal penalty of weight `rho`).
        plan_gradient: if False, the plan is a constant for differentiation (PLOT-style); the score
            still differentiates through `S` linearly. If True, gradients flow through the solver.
        uniform: the no-OT ablation: `plan = 1 / (M N)`, `score = sum_n S` (no solver runs).
        solver: a registered transport (`registry.registered_transports()`): the built-in
            'sinkhorn' (ott-jax) or 'newton' (semi-dual Newton, balanced only), or your own.
        backward: 'implicit' (transports declared balanced-entropic: exact at convergence,
            O(M N) memory per problem; others: autodiff through the transport) or 'unrolled'
            (autodiff always; needs `threshold == 0`).
        domain: Sinkhorn iterations in the 'log' domain, or the 'kernel' (scaling) domain when
            the cost range over epsilon leaves float32 headroom (see `solvers`): 'auto' falls
            back to log silently, 'kernel' with a one-time note on stderr.
        threshold: 0 = fixed iterations; > 0 = stop once ott's marginal error is below it.
        dtype: dtype of the cost, the solver and the outputs; float32 whatever the input dtype
            (bf16 inputs are upcast). float64 needs `jax_enable_x64` (tests).
        options: the transport's options (`model.ot.options`), over its declared defaults.
        grid: the pixel grid `(h, w)`, `h * w == M`, for transports with spatial structure.
        pixels: pixel features `[..., M, D]` whose leading dimensions are the first ones of the
            similarity's (the others, e.g. classes, are broadcast); None if not needed.
        prompts: prompt features `[..., N, D]`, leading dimensions as for `pixels`.

    Returns:
        `MPOTOutput` with score `[..., M]`, plan `[..., M, N]`, entropy, marginal_error and
        iterations `[...]`, and the transport's other diagnostics.

    Raises:
        ValueError: on a bad option (see `_check_args`), an unregistered solver, a similarity with
            fewer than 2 dimensions, features or a grid that do not fit it, or a transport output
            of the wrong shape (at trace time) or, outside jit, with non-finite or negative cells.
    """
    tau = _check_args(epsilon, num_iterations, tau, solver, backward, domain, threshold)
    entry = registry.get_transport(solver)
    settings = registry.Settings(
        float(epsilon),
        tau,
        num_iterations,
        float(threshold),
        domain,
        registry.resolve_options(entry, options),
    )
    s = jnp.asarray(similarity)
    if s.ndim < 2:
        raise ValueError(f"mpot: similarity must be [..., M, N], got shape {s.shape}.")
    s = s.astype(dtype)
    if uniform:
        return _uniform(s)
    *lead, m, n = s.shape
    grid = _check_grid(grid, m)
    pixels = _feature(pixels, "pixels", lead, m, dtype)
    prompts = _feature(prompts, "prompts", lead, n, dtype)
    if entry.balanced_entropic:  # the plan depends on S alone: no features to carry
        pixels = prompts = None
    inputs = (s, pixels, prompts)  # the score below still differentiates through s linearly
    if not plan_gradient:
        inputs = jax.lax.stop_gradient(inputs)
    plan, diagnostics = _solve_batch(entry, settings, backward == "implicit", grid, inputs)
    _check_values(plan, solver)
    iterations = diagnostics.pop("iterations")
    unit_mass = entry.balanced_entropic and tau >= 1.0
    return _outputs(s, plan, iterations, diagnostics, unit_mass=unit_mass)


def _uniform(s: jax.Array) -> MPOTOutput:
    """The no-OT ablation's output for similarities `s [..., M, N]`: the uniform plan."""
    *lead, m, n = s.shape
    plan = jnp.full(s.shape, 1.0 / (m * n), s.dtype)
    zeros = jnp.zeros(lead, s.dtype)
    entropy = jnp.full(lead, jnp.log(m * n), s.dtype)
    return MPOTOutput(s.sum(-1), plan, entropy, zeros, jnp.zeros(lead, jnp.int32), {})


def _solve_batch(
    entry: registry.Entry,
    settings: registry.Settings,
    implicit_backward: bool,
    grid: tuple[int, int] | None,
    inputs: tuple,
) -> tuple[jax.Array, dict]:
    """Runs the transport on every problem of `inputs = (S [..., M, N], pixels, prompts)`."""
    s, pixels, prompts = inputs
    *lead, m, n = s.shape
    shared = None if entry.prepare is None else entry.prepare(jax.lax.stop_gradient(s), settings)
    solve = _checked(entry, settings, grid, (m, n), s.dtype)
    if implicit_backward and entry.balanced_entropic:
        checked = solve

        def solve(x, px, pr, sh):
            del px, pr
            return implicit.implicit_plan(
                lambda y, z: checked(y, None, None, z), settings.epsilon, settings.tau, x, sh
            )

    # One vmap per leading dimension rather than a reshape to [P, M, N]: a reshape merges a sharded
    # batch axis with the others and makes every device solve every problem. `shared` (e.g. the
    # kernel/log flag) is one value for the batch (in_axes None), so a branch stays a branch.
    for level in reversed(range(len(lead))):
        solve = jax.vmap(solve, in_axes=(0, _axis(pixels, level), _axis(prompts, level), None))
    return solve(s, pixels, prompts, shared)


def _check_grid(grid: Any, m: int) -> tuple[int, int] | None:
    if grid is None:
        return None
    if (
        not isinstance(grid, tuple | list)
        or len(grid) != 2
        or not all(isinstance(x, int) and x > 0 for x in grid)
        or grid[0] * grid[1] != m
    ):
        raise ValueError(f"mpot: grid must be (h, w) with h * w == M = {m}, got {grid!r}.")
    return int(grid[0]), int(grid[1])


def _feature(
    x: jax.Array | None, what: str, lead: list[int], size: int, dtype: jnp.dtype
) -> jax.Array | None:
    """Checks a feature array `[*lead[:k], size, D]` and casts it to `dtype`."""
    if x is None:
        return None
    x = jnp.asarray(x)
    k = x.ndim - 2
    if x.ndim < 2 or x.shape[-2] != size or list(x.shape[:k]) != list(lead[:k]):
        raise ValueError(
            f"mpot: {what} must be [..., {size}, D] with leading dimensions a "
            f"prefix of the similarity's {tuple(lead)}, got shape {x.shape}."
        )
    return x.astype(dtype)


def _axis(x: jax.Array | None, level: int) -> int | None:
    """vmap axis of a feature at leading level `level`: 0 where it has that dimension."""
    return 0 if x is not None and level < x.ndim - 2 else None


def _checked(
    entry: registry.Entry,
    settings: registry.Settings,
    grid: tuple[int, int] | None,
    shape: tuple[int, int],
    dtype: jnp.dtype,
):
    """`(S [M, N], pixels, prompts, shared) -> (plan [M, N], diagnostics)` with the output checked."""

    def solve(s, pixels, prompts, shared):
        out = entry.fn(registry.Problem(s, grid, pixels, prompts, shared), settings)
        plan, diagnostics = out if isinstance(out, tuple) else (out, {})
        if not isinstance(diagnostics, dict) or not all(isinstance(k, str) for k in diagnostics):
            raise TypeError(
                f"transport {entry.name!r} must return the plan or (plan, dict of "
                f"diagnostics), got diagnostics of type {type(diagnostics).__name__}."
            )
        plan = jnp.asarray(plan)
        if plan.shape != shape:
            raise ValueError(
                f"transport {entry.name!r} returned a plan of shape {plan.shape} for "
                f"a problem of shape {shape}; it must return the plan [M, N]."
            )
        diagnostics = {k: jnp.asarray(v) for k, v in diagnostics.items()}
        diagnostics["iterations"] = jnp.asarray(diagnostics.get("iterations", 0), jnp.int32)
        return plan.astype(dtype), diagnostics

    return solve


def _check_values(plan: jax.Array, solver: str) -> None:
    """Outside jit (concrete values): a plan must be finite and non-negative."""
    if isinstance(plan, jax.core.Tracer):
        return
    bad = int(jnp.sum(~jnp.isfinite(plan) | (plan < 0)))
    if bad:
        raise ValueError(
            f"mpot: transport {solver!r} returned {bad} non-finite or negative plan "
            f"cells (of {plan.size}); a plan must be finite and >= 0."
        )


def _outputs(
    s: jax.Array,
    plan: jax.Array,
    iterations: jax.Array,
    diagnostics: dict[str, jax.Array],
    *,
    unit_mass: bool,
) -> MPOTOutput:
    """Score and diagnostics from the similarity `[..., M, N]` and the plan."""
    m, n = s.shape[-2:]
    # Unbalanced (or partial) plans carry less (or more) than unit mass, often far less when the
    # cost is high everywhere; the score uses the plan rescaled to unit mass so it stays on the
    # balanced scale. Balanced entropic plans (the built-ins at tau = 1) have unit mass by
    # construction and are used as they are. The returned plan is the transport's, unscaled.
    weights = plan if unit_mass else plan / jnp.maximum(plan.sum((-1, -2), keepdims=True), 1e-30)
    score = (m * n) * jnp.einsum("...mn,...mn->...m", weights, s)
    fixed = jax.lax.stop_gradient(plan)
    entropy = -jnp.sum(jax.scipy.special.xlogy(fixed, fixed), axis=(-2, -1))
    marginal_error = jnp.abs(fixed.sum(-1) - 1.0 / m).sum(-1) + jnp.abs(fixed.sum(-2) - 1.0 / n).sum(-1)
    return MPOTOutput(score, plan, entropy, marginal_error, iterations, diagnostics)


def warn_if_unconverged(marginal_error: float | None, where: str) -> None:
    """Prints one warning per process, the first time a balanced plan's marginal error is too big.

    That is when the marginal error (a host float, e.g. `ZegOTOutput.ot_marginal_error`) exceeds
    `MARGINAL_ERROR_WARNING` or is NaN.
    """
    if marginal_error is None or "marginal" in _warned or marginal_error <= MARGINAL_ERROR_WARNING:
        return  # NaN goes on to the warning
    _warned.add("marginal")
    print(
        f"warning: MPOT did not converge ({where}: a plan's marginal error is "
        f"{marginal_error:.3g}, above {MARGINAL_ERROR_WARNING}); its scores are not the OT "
        "scores. Raise model.ot.epsilon or model.ot.newton_steps / num_iterations (similarities "
        "far beyond [-1, 1] need a larger epsilon). Shown once.",
        file=sys.stderr,
        flush=True,
    )
