"""Transports from the optimal-transport literature, written with the public plug-in API.

Importing `zegot_jax.ot` registers them, so `model.ot.solver = '<name>'` selects one (and a saved
run that used one loads anywhere this package does). Each takes one problem (`Problem`, `[M, N]`)
and returns its plan; gradients come from autodiff (none is declared balanced-entropic).

- 'semi_relaxed': entropic OT with the exact pixel marginal and a KL-relaxed prompt marginal.
- 'sparse': quadratically regularised OT, whose plans give each pixel to few prompts.
- 'partial': entropic partial OT, moving only a fraction of the mass.
- 'weighted_prompts': balanced entropic OT onto non-uniform prompt marginals that the prompts
  themselves set (each prompt's weight follows its relevance to the image).
- 'fused_gw': fused Gromov-Wasserstein, which also matches the pixel grid's spatial structure to
  the prompts' structure.
"""

import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.problems.quadratic import quadratic_problem
from ott.solvers.quadratic import gromov_wasserstein

from zegot_jax.ot.registry import Problem, Settings, register_transport
from zegot_jax.ot.solvers import unrolled_sinkhorn


@register_transport("semi_relaxed", options={"rho": 1.0})
def semi_relaxed(problem: Problem, settings: Settings):
    """Semi-relaxed entropic OT: every pixel keeps mass `1/M`, prompts take what they attract.

    Solves `min_T <C, T> - eps H(T) + rho KL(T^T 1 | 1/N)` subject to `T 1 = 1/M`, `T >= 0`,
    with the generalised Sinkhorn iterations of Chizat, Peyre, Schmitzer and Vialard, "Scaling
    algorithms for unbalanced optimal transport problems" (Math. Comp. 2018): ott-jax's Sinkhorn
    with `tau_a = 1` and `tau_b = rho / (rho + eps)` (ott's convention), `settings.num_iterations`
    iterations from zero potentials, differentiated by autodiff through them. A prompt that no
    pixel prefers may end with almost no mass instead of being forced to take `1/N`; as `rho`
    grows the plan tends to the balanced one. Options: `rho` (> 0, cost units).

    Returns:
        The plan `[M, N]` (rows sum to `1/M`, so the total mass is 1) and the iteration count.
    """
    rho = float(settings.options["rho"])
    if not rho > 0:
        raise ValueError(f"model.ot.options.rho must be > 0 for 'semi_relaxed', got {rho}.")
    geom = geometry.Geometry(cost_matrix=problem.cost, epsilon=settings.epsilon)
    out = unrolled_sinkhorn(settings.num_iterations)(
        linear_problem.LinearProblem(geom, tau_a=1.0, tau_b=rho / (rho + settings.epsilon))
    )
    return out.matrix, {"iterations": out.n_iters}


def simplex_threshold(x: jax.Array, mass: float, axis: int) -> jax.Array:
    """`t` with `sum([x - t]_+, axis) == mass` (> 0), by sorting: the sparsemax threshold.

    Args:
        x: values `[..., K, ...]`; the sum runs over `axis`.
        mass: the target sum.
        axis: the axis to sum over.

    Returns:
        The thresholds, `x`'s shape without `axis`.
    """
    top = -jnp.sort(-x, axis=axis)  # descending
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    count = jnp.arange(1, x.shape[axis] + 1, dtype=x.dtype).reshape(shape)
    candidates = (jnp.cumsum(top, axis=axis) - mass) / count
    support = jnp.sum(top > candidates, axis=axis, keepdims=True)  # the largest such k
    return jnp.take_along_axis(candidates, support - 1, axis=axis).squeeze(axis)


@register_transport("sparse", options={})
def sparse(problem: Problem, settings: Settings):
    """Quadratically regularised (sparse) OT with uniform marginals.

    Solves `min_T <C, T> + (lam / 2) ||T||^2` subject to `T 1 = 1/M`, `T^T 1 = 1/N`, `T >= 0`
    (Blondel, Seguy and Rolet, "Smooth and Sparse Optimal Transport", AISTATS 2018), with
    `lam = eps M N`, so that `settings.epsilon` is in cost units as for entropic OT (each pixel's
    row of `M T` is the sparsemax of `(g - C_m) / (eps N)`). The optimal plan is
    `T = [f 1^T + 1 g^T - C]_+ / lam`: unlike entropic plans it has exact zeros. Solved by exact
    block coordinate ascent on the dual (each row's `f`, then each column's `g`, is the threshold
    of a simplex projection, `simplex_threshold`), `settings.num_iterations` rounds from `g = 0`,
    ending with the rows (so `T 1 = 1/M` exactly); differentiated by autodiff through them.

    Returns:
        The plan `[M, N]`, the share of its cells that are zero and the iteration count.
    """
    cost = problem.cost
    m, n = cost.shape
    lam = settings.epsilon * m * n

    def rows(g):  # f [M]: sum_n [f_m + g_n - C_mn]_+ = lam / M
        return -simplex_threshold(g[None, :] - cost, lam / m, axis=1)

    def columns(f):  # g [N]: sum_m [f_m + g_n - C_mn]_+ = lam / N
        return -simplex_threshold(f[:, None] - cost, lam / n, axis=0)

    def step(g, _):
        return columns(rows(g)), None

    g, _ = jax.lax.scan(step, jnp.zeros((n,), cost.dtype), None, length=settings.num_iterations)
    plan = jnp.maximum(rows(g)[:, None] + g[None, :] - cost, 0.0) / lam
    return plan, {"zeros": jnp.mean(plan == 0), "iterations": settings.num_iterations}


@register_transport("partial", options={"fraction": 0.8})
def partial(problem: Problem, settings: Settings):
    """Entropic partial OT: only a `fraction` of the mass moves, from the pixels that match best.

    Solves `min_T <C, T> - eps H(T)` subject to `T 1 <= 1/M`, `T^T 1 <= 1/N`, `1^T T 1 = s`
    (`s = fraction`): the KL projection of the Gibbs kernel `exp(-C / eps)` onto those three
    sets, whose single-set projections are closed-form (Benamou, Carlier, Cuturi, Nenna and
    Peyre, "Iterative Bregman projections for regularized transportation problems", SIAM J. Sci.
    Comput. 2015). The two inequality sets are not affine, so the cyclic projections carry
    Dykstra's corrections in the KL geometry (Bauschke and Lewis, "Dykstra's algorithm with
    Bregman projections: a convergence proof", Optimization 2000); without them the iterations can
    stop at a feasible plan that is not the optimum. Log domain, `settings.num_iterations`
    rounds, differentiated by autodiff through them. Pixels that match no prompt well keep
    little mass, so their score (from the plan at unit mass) stays near 0. Options: `fraction`
    in (0, 1].

    Returns:
        The plan `[M, N]` (total mass `s`) and the iteration count.
    """
    s = float(settings.options["fraction"])
    if not 0.0 < s <= 1.0:
        raise ValueError(f"model.ot.options.fraction must be in (0, 1] for 'partial', got {s}.")
    cost = problem.cost
    m, n = cost.shape

    def cap(log_plan, log_limit, axis):  # KL projection onto {sum over axis <= limit}
        total = jax.nn.logsumexp(log_plan, axis=axis, keepdims=True)
        return log_plan + jnp.minimum(log_limit - total, 0.0)

    def step(carry, _):
        log_plan, rows_q, columns_q = carry  # Dykstra's corrections, in log form
        shifted = log_plan + rows_q
        log_plan = cap(shifted, -jnp.log(m), axis=1)
        rows_q = shifted - log_plan
        shifted = log_plan + columns_q
        log_plan = cap(shifted, -jnp.log(n), axis=0)
        columns_q = shifted - log_plan
        log_plan = log_plan + jnp.log(s) - jax.nn.logsumexp(log_plan)  # affine: no correction
        return (log_plan, rows_q, columns_q), None

    zeros = jnp.zeros_like(cost)
    (log_plan, _, _), _ = jax.lax.scan(
        step, (-cost / settings.epsilon, zeros, zeros), None, length=settings.num_iterations
    )
    return jnp.exp(log_plan), {"iterations": settings.num_iterations}


@register_transport("weighted_prompts", options={"temperature": 0.02})
def weighted_prompts(problem: Problem, settings: Settings):
    """Balanced entropic OT onto prompt marginals that follow each prompt's relevance to the image.

    MPOT gives every prompt of a class the same mass `1/N`, so a prompt that describes nothing in
    the image still takes a quarter of the pixels. Here the prompt marginal is
    `b = softmax(mean_m S[m, :] / temperature)`: the prompts whose mean cosine to the image's
    pixels is highest take more mass. The pixel marginal stays `1/M`. Weighting the elements of
    an OT problem by the model's own predictions follows AWT (Zhu, Ji, Zhao, Wu and Wang,
    "AWT: Transferring Vision-Language Models via Augmentation, Weighting, and Transportation",
    NeurIPS 2024), which weights augmented views and class descriptions by their prediction
    confidence before transporting between them. The weights add no parameters: they are a
    function of the learned prompts, so training shapes them through the prompts (gradients flow
    through `b` and the `settings.num_iterations` unrolled Sinkhorn iterations). As
    `temperature` grows the marginal tends to uniform and the plan to MPOT's. Options:
    `temperature` (> 0, cosine units).

    Returns:
        The plan `[M, N]` (total mass 1), the prompt marginal `b [N]` and the iteration count.
    """
    temperature = float(settings.options["temperature"])
    if not temperature > 0:
        raise ValueError(
            f"model.ot.options.temperature must be > 0 for 'weighted_prompts', got {temperature}."
        )
    b = jax.nn.softmax(jnp.mean(problem.similarity, axis=0) / temperature)
    geom = geometry.Geometry(cost_matrix=problem.cost, epsilon=settings.epsilon)
    out = unrolled_sinkhorn(settings.num_iterations)(linear_problem.LinearProblem(geom, b=b))
    return out.matrix, {"prompt_marginal": b, "iterations": out.n_iters}


def grid_distances(grid: tuple[int, int], dtype) -> jax.Array:
    """Squared Euclidean distances between the cells of an `(h, w)` grid, scaled to [0, 1]."""
    h, w = grid
    rows, columns = jnp.divmod(jnp.arange(h * w), w)
    points = jnp.stack([rows, columns], axis=1).astype(dtype)
    squared = jnp.sum((points[:, None, :] - points[None, :, :]) ** 2, axis=-1)
    return squared / jnp.maximum(jnp.max(squared), 1.0)


@register_transport("fused_gw", options={"alpha": 0.5, "outer_iterations": 5})
def fused_gw(problem: Problem, settings: Settings):
    """Entropic fused Gromov-Wasserstein between the pixel grid and the prompts, uniform marginals.

    Solves `min_T (1 - alpha) [<C, T> - eps H(T)] + alpha sum_{i,j,k,l} (A_ik - B_jl)^2 T_ij T_kl`
    over plans with marginals `1/M`, `1/N` (fused GW: Vayer, Chapel, Flamary, Tavenard and
    Courty, "Optimal Transport for structured data with application on graphs", ICML 2019), where
    `C = 1 - S` is MPOT's cost, `A [M, M]` the squared distances between pixel positions on the
    grid and `B [N, N]` the cosine distances between the prompts, both scaled to [0, 1]. The
    structure term pays when two nearby pixels go to two distant prompts, so neighbouring pixels
    tend to share a prompt; `eps` is `settings.epsilon` in MPOT's cost units. Solved by ott-jax's
    entropic Gromov-Wasserstein (Peyre, Cuturi and Solomon, "Gromov-Wasserstein averaging of
    kernel and distance matrices", ICML 2016): from the plan `1/(M N)`, `outer_iterations`
    times, linearise the objective at the current plan and solve that entropic OT problem with
    `settings.num_iterations` Sinkhorn iterations (POT's `entropic_fused_gromov_wasserstein`
    with `max_iter=outer_iterations` runs the same iterations; ott counts the first linear
    solve apart from its `max_iterations`). Gradients: autodiff through every iteration. Needs
    the grid and the prompt features (the model passes both). Options: `alpha` in (0, 1)
    (towards 0: MPOT's plan), `outer_iterations` >= 2.

    Returns:
        The plan `[M, N]` (total mass 1) and the outer iteration count.
    """
    alpha = float(settings.options["alpha"])
    outer = int(settings.options["outer_iterations"])
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"model.ot.options.alpha must be in (0, 1) for 'fused_gw', got {alpha}.")
    if outer < 2:
        raise ValueError(f"model.ot.options.outer_iterations must be >= 2 for 'fused_gw', got {outer}.")
    if problem.grid is None or problem.prompts is None:
        raise ValueError(
            "'fused_gw' needs the pixel grid and the prompt features; call mpot with "
            "grid=(h, w) and prompts=[..., N, D] (the model passes both)."
        )
    cost = problem.cost
    prompts = problem.prompts
    prompt_distances = jnp.clip(1.0 - prompts @ prompts.T, 0.0, 2.0) / 2.0
    # ott linearises `quadratic + fused_penalty * linear` as `(A T B^T terms) + fused_penalty C`,
    # half the gradient of the quadratic term (Peyre et al.'s eq. 6); dividing the objective
    # above by 2 alpha makes the two iterations equal: fused_penalty = (1 - alpha) / (2 alpha),
    # and the linear problems' epsilon is fused_penalty * eps.
    ratio = (1.0 - alpha) / (2.0 * alpha)
    quadratic = quadratic_problem.QuadraticProblem(
        geometry.Geometry(cost_matrix=grid_distances(problem.grid, cost.dtype)),
        geometry.Geometry(cost_matrix=prompt_distances),
        geometry.Geometry(cost_matrix=cost),
        fused_penalty=ratio,
    )
    solver = gromov_wasserstein.GromovWasserstein(
        unrolled_sinkhorn(settings.num_iterations),
        epsilon=ratio * settings.epsilon,
        min_iterations=outer - 1,
        max_iterations=outer - 1,
        threshold=0.0,
    )
    out = solver(quadratic)
    return out.matrix, {"iterations": jnp.asarray(outer, jnp.int32)}
