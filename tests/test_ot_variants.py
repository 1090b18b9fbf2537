"""Literature transports (`zegot_jax.ot.variants`) against POT, their marginals and gradients."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

import zegot_jax.ot as zot


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _similarity(seed, shape):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape)


def _solve(s, solver, **kw):
    return zot.mpot(jnp.asarray(s), solver=solver, dtype=jnp.float64, **{
        "epsilon": 0.1, "num_iterations": 300, **kw})


def _check_gradient(solver, **kw):
    s = jnp.asarray(_similarity(3, (6, 3)))
    w = jnp.asarray(_similarity(4, (6,)))
    loss = jax.jit(lambda x: jnp.sum(w * zot.mpot(x, solver=solver, epsilon=0.1,
                                                  dtype=jnp.float64, **kw).score))
    grad = np.asarray(jax.grad(loss)(s))
    fd = np.zeros(s.shape)
    for idx in np.ndindex(*s.shape):
        e = jnp.zeros(s.shape).at[idx].set(1e-6)
        fd[idx] = (loss(s + e) - loss(s - e)) / 2e-6
    np.testing.assert_allclose(grad, fd, atol=1e-6 * np.abs(fd).max())
    assert np.abs(fd).max() > 0.1


def test_semi_relaxed_keeps_pixel_mass_and_matches_pot(x64):
    s = _similarity(0, (12, 3))
    out = _solve(s, "semi_relaxed", options={"rho": 0.5})
    plan = np.asarray(out.plan)
    np.testing.assert_allclose(plan.sum(1), 1 / 12, atol=1e-14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT warns that reg_type='entropy' ignores c
        expected = pot.unbalanced.sinkhorn_unbalanced(
            np.full(12, 1 / 12), np.full(3, 1 / 3), 1 - s, 0.1, (np.inf, 0.5),
            reg_type="entropy", numItermax=20000, stopThr=1e-15)
    np.testing.assert_allclose(plan, expected, atol=1e-10 / s.size)
    assert np.abs(plan.sum(0) - 1 / 3).max() > 0.02  # the prompt marginal really is relaxed


def test_semi_relaxed_gradient_matches_central_differences(x64):
    _check_gradient("semi_relaxed", num_iterations=60, options={"rho": 0.5})


def test_sparse_matches_pot_with_exact_zeros_and_marginals(x64):
    s = _similarity(0, (12, 3))
    out = _solve(s, "sparse", num_iterations=30)
    plan = np.asarray(out.plan)
    expected = pot.smooth.smooth_ot_dual(np.full(12, 1 / 12), np.full(3, 1 / 3), 1 - s,
                                         0.1 * s.size, reg_type="l2", stopThr=1e-14,
                                         numItermax=10000)
    np.testing.assert_allclose(plan, expected, atol=1e-6 / s.size)  # POT's L-BFGS tolerance
    np.testing.assert_array_equal(plan == 0, expected < 1e-12)
    assert 0.3 < float(out.diagnostics["zeros"]) < 0.7  # half the cells are exactly zero
    np.testing.assert_allclose(plan.sum(1), 1 / 12, atol=1e-15)
    np.testing.assert_allclose(plan.sum(0), 1 / 3, atol=1e-8)
    # A weaker regulariser gives each pixel to fewer prompts; a stronger one to more.
    assert (float(_solve(s, "sparse", epsilon=0.02).diagnostics["zeros"])
            > float(out.diagnostics["zeros"])
            > float(_solve(s, "sparse", epsilon=1.0).diagnostics["zeros"]))


def test_sparse_gradient_matches_central_differences(x64):
    _check_gradient("sparse", num_iterations=100)


def test_partial_moves_the_fraction_within_the_marginals_and_matches_pot(x64):
    s = _similarity(0, (12, 3))
    out = _solve(s, "partial", options={"fraction": 0.6})
    plan = np.asarray(out.plan)
    expected = pot.partial.entropic_partial_wasserstein(
        np.full(12, 1 / 12), np.full(3, 1 / 3), 1 - s, 0.1, m=0.6, numItermax=2000,
        stopThr=1e-100)
    np.testing.assert_allclose(plan, expected, atol=1e-10 / s.size)
    np.testing.assert_allclose(plan.sum(), 0.6, rtol=1e-14)
    assert plan.sum(1).max() <= 1 / 12 + 1e-15 and plan.sum(0).max() <= 1 / 3 + 1e-15
    assert plan.sum(1).min() < 0.01 / 12  # the worst-matched pixels keep almost nothing
    np.testing.assert_allclose(out.score, 36 * (plan / 0.6 * s).sum(1), rtol=1e-12)


def test_partial_gradient_matches_central_differences(x64):
    _check_gradient("partial", num_iterations=100, options={"fraction": 0.7})


def test_simplex_threshold_is_sparsemax():
    x = jnp.asarray([[0.3, -1.0, 0.25, 2.0], [0.1, 0.1, 0.1, 0.1]])
    t = zot.variants.simplex_threshold(x, 1.0, axis=1)
    np.testing.assert_allclose(jnp.maximum(x - t[:, None], 0).sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(t, [1.0, -0.15], rtol=1e-6)
