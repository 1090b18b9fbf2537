"""Literature transports (`zegot_jax.ot.variants`) against POT, their marginals and gradients."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from gradcheck import central_differences

import zegot_jax.ot as zot


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _similarity(seed, shape):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape)


def _solve_and_check_gradient(solver, **kw):
    """The plan of a 6 x 3 problem (float64), after checking the score's gradient.

    The gradient is checked against central differences (the same jitted solve).
    """
    s = jnp.asarray(_similarity(3, (6, 3)))
    w = jnp.asarray(_similarity(4, (6,)))
    solve = jax.jit(
        lambda x: zot.mpot(
            x, solver=solver, dtype=jnp.float64, **{"epsilon": 0.1, "num_iterations": 300, **kw}
        )
    )

    def loss(x):
        return jnp.sum(w * solve(x).score)

    grad = np.asarray(jax.grad(loss)(s))
    fd = central_differences(loss, s)
    np.testing.assert_allclose(grad, fd, atol=1e-6 * np.abs(fd).max())
    assert np.abs(fd).max() > 0.1
    return np.asarray(s), solve(s)


A, B = np.full(6, 1 / 6), np.full(3, 1 / 3)  # the uniform marginals of a 6 x 3 problem


def test_semi_relaxed_keeps_pixel_mass_matches_pot_and_differentiates(x64):
    s, out = _solve_and_check_gradient("semi_relaxed", options={"rho": 0.5})
    plan = np.asarray(out.plan)
    np.testing.assert_allclose(plan.sum(1), 1 / 6, atol=1e-14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT warns that reg_type='entropy' ignores c
        expected = pot.unbalanced.sinkhorn_unbalanced(
            A, B, 1 - s, 0.1, (np.inf, 0.5), reg_type="entropy", numItermax=20000, stopThr=1e-15
        )
    np.testing.assert_allclose(plan, expected, atol=1e-10 / s.size)
    assert np.abs(plan.sum(0) - 1 / 3).max() > 0.02  # the prompt marginal really is relaxed


def test_sparse_matches_pot_with_exact_zeros_marginals_and_gradient(x64):
    s, out = _solve_and_check_gradient("sparse", num_iterations=100)
    plan = np.asarray(out.plan)
    expected = pot.smooth.smooth_ot_dual(
        A, B, 1 - s, 0.1 * s.size, reg_type="l2", stopThr=1e-14, numItermax=10000
    )
    np.testing.assert_allclose(plan, expected, atol=1e-6 / s.size)  # POT's L-BFGS tolerance
    np.testing.assert_array_equal(plan == 0, expected < 1e-12)
    zeros = float(out.diagnostics["zeros"])
    assert 0.2 < zeros < 0.8  # many cells are exactly zero
    np.testing.assert_allclose(plan.sum(1), 1 / 6, atol=1e-15)
    np.testing.assert_allclose(plan.sum(0), 1 / 3, atol=1e-8)
    # A stronger regulariser gives each pixel to more prompts.
    denser = zot.mpot(
        jnp.asarray(s), epsilon=1.0, num_iterations=100, solver="sparse", dtype=jnp.float64
    ).diagnostics["zeros"]
    assert zeros > float(denser)


def test_partial_moves_the_fraction_within_the_marginals_matches_pot_and_differentiates(x64):
    s, out = _solve_and_check_gradient("partial", options={"fraction": 0.6})
    plan = np.asarray(out.plan)
    expected = pot.partial.entropic_partial_wasserstein(
        A, B, 1 - s, 0.1, m=0.6, numItermax=2000, stopThr=1e-100
    )
    np.testing.assert_allclose(plan, expected, atol=1e-10 / s.size)
    np.testing.assert_allclose(plan.sum(), 0.6, rtol=1e-14)
    rows, columns = plan.sum(1), plan.sum(0)
    assert rows.max() <= 1 / 6 + 1e-15 and columns.max() <= 1 / 3 + 1e-15
    assert rows.min() < 0.05 / 6  # the worst-matched pixels keep almost nothing
    # Optimality (KKT): log T + C / eps = alpha_m + beta_n, and a row (column) whose constraint is
    # slack has the largest alpha (beta): its multiplier is zero.
    log_plan = np.log(plan) + (1 - s) / 0.1
    alpha, beta = log_plan.mean(1), log_plan.mean(0) - log_plan.mean()
    np.testing.assert_allclose(log_plan, alpha[:, None] + beta[None, :], atol=1e-9)
    slack_rows, slack_columns = rows < 1 / 6 - 1e-9, columns < 1 / 3 - 1e-9
    assert slack_rows.any() and slack_columns.any() and not slack_rows.all()
    np.testing.assert_allclose(alpha[slack_rows], alpha.max(), atol=1e-9)
    np.testing.assert_allclose(beta[slack_columns], beta.max(), atol=1e-9)
    np.testing.assert_allclose(out.score, 18 * (plan / 0.6 * s).sum(1), rtol=1e-12)


def test_simplex_threshold_is_sparsemax():
    x = jnp.asarray([[0.3, -1.0, 0.25, 2.0], [0.1, 0.1, 0.1, 0.1]])
    t = zot.variants.simplex_threshold(x, 1.0, axis=1)
    np.testing.assert_allclose(jnp.maximum(x - t[:, None], 0).sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(t, [1.0, -0.15], rtol=1e-6)


def test_weighted_prompts_moves_mass_to_relevant_prompts_matches_pot_and_differentiates(x64):
    s, out = _solve_and_check_gradient("weighted_prompts", options={"temperature": 0.2})
    plan = np.asarray(out.plan)
    weights = np.exp(s.mean(0) / 0.2)
    weights /= weights.sum()
    np.testing.assert_allclose(out.diagnostics["prompt_marginal"], weights, rtol=1e-12)
    expected = pot.sinkhorn(A, weights, 1 - s, 0.1, numItermax=20000, stopThr=1e-15, method="sinkhorn_log")
    np.testing.assert_allclose(plan, expected, atol=1e-10 / s.size)
    np.testing.assert_allclose(plan.sum(1), 1 / 6, atol=1e-12)
    np.testing.assert_allclose(plan.sum(0), weights, atol=1e-12)
    assert np.abs(weights - 1 / 3).max() > 0.05  # not the uniform marginal
    # A high temperature gives back MPOT's balanced plan.
    flat = zot.mpot(
        jnp.asarray(s),
        epsilon=0.1,
        num_iterations=300,
        solver="weighted_prompts",
        options={"temperature": 1e12},
        dtype=jnp.float64,
    ).plan
    mpot_plan = zot.mpot(
        jnp.asarray(s), epsilon=0.1, num_iterations=300, solver="sinkhorn", dtype=jnp.float64
    ).plan
    np.testing.assert_allclose(flat, mpot_plan, atol=1e-9 / s.size)


def _prompt_features(seed, n, d=5):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_fused_gw_matches_pot_keeps_marginals_and_differentiates(x64):
    prompts = _prompt_features(5, 3)
    s, out = _solve_and_check_gradient(
        "fused_gw",
        grid=(2, 3),
        prompts=jnp.asarray(prompts),
        num_iterations=3000,
        options={"alpha": 0.5, "outer_iterations": 4},
    )
    plan = np.asarray(out.plan)
    rows, columns = np.divmod(np.arange(6), 3)
    grid = (rows[:, None] - rows[None]) ** 2 + (columns[:, None] - columns[None]) ** 2
    prompt_distances = (1 - prompts @ prompts.T) / 2
    expected = pot.gromov.entropic_fused_gromov_wasserstein(
        1 - s,
        grid / grid.max(),
        prompt_distances,
        A,
        B,
        epsilon=0.5 * 0.1,
        alpha=0.5,
        max_iter=4,
        tol=0.0,
        numItermax=20000,
        stopThr=1e-15,
    )
    np.testing.assert_allclose(plan, expected, atol=1e-12 / s.size)
    np.testing.assert_allclose(plan.sum(1), 1 / 6, atol=1e-14)
    np.testing.assert_allclose(plan.sum(0), 1 / 3, atol=1e-14)
    # The structure term changes the plan; as alpha -> 0 it is MPOT's.
    mpot_plan = np.asarray(
        zot.mpot(jnp.asarray(s), epsilon=0.1, num_iterations=300, solver="sinkhorn", dtype=jnp.float64).plan
    )
    assert np.abs(plan - mpot_plan).max() > 0.01 / s.size
    weak = zot.mpot(
        jnp.asarray(s),
        epsilon=0.1,
        num_iterations=300,
        solver="fused_gw",
        grid=(2, 3),
        prompts=jnp.asarray(prompts),
        dtype=jnp.float64,
        options={"alpha": 1e-6, "outer_iterations": 2},
    ).plan
    np.testing.assert_allclose(weak, mpot_plan, atol=1e-5 / s.size)


def test_fused_gw_needs_the_grid_and_prompts():
    with pytest.raises(ValueError, match="needs the pixel grid and the prompt features"):
        zot.mpot(jnp.zeros((6, 3)), epsilon=0.1, num_iterations=10, solver="fused_gw")
