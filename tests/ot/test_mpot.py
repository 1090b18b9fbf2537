"""Tests for zegot_jax.ot: MPOT against POT, finite differences and a plain JAX loop."""

import importlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest
from gradcheck import central_differences

import zegot_jax.ot as zot
from zegot_jax.ot import solvers, spd

mpot_lib = importlib.import_module("zegot_jax.ot.mpot")  # the module (`zot.mpot` is the function)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _similarity(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    """Cosine-like similarities in [-scale, scale], float64."""
    return scale * np.random.default_rng(seed).uniform(-1.0, 1.0, shape)


def _pot_plan(s: np.ndarray, epsilon: float, num_iterations: int) -> np.ndarray:
    m, n = s.shape
    a, b = np.full(m, 1.0 / m), np.full(n, 1.0 / n)
    return pot.sinkhorn(
        a, b, 1.0 - s, reg=epsilon, method="sinkhorn_log", numItermax=num_iterations, stopThr=0.0, warn=False
    )


@pytest.mark.parametrize("num_iterations", [1, 37, 100])
def test_exact_iteration_count_matches_pot_float64(x64, num_iterations):
    # POT updates in the same order from the same start, so equal counts give equal plans; an
    # iteration more or less would differ by far more than the tolerance.
    s = _similarity(0, (40, 3))
    out = zot.mpot(jnp.asarray(s), epsilon=0.05, num_iterations=num_iterations, dtype=jnp.float64)
    assert int(out.iterations) == num_iterations
    expected = _pot_plan(s, 0.05, num_iterations)
    np.testing.assert_allclose(np.asarray(out.plan) * s.size, expected * s.size, atol=1e-10)
    other = _pot_plan(s, 0.05, num_iterations + 1)
    assert np.abs(other - expected).max() * s.size > 1e-8


@pytest.mark.parametrize("epsilon", [0.05, 0.02])
def test_float32_plan_within_1e4_of_cell_mass_of_pot(epsilon):
    s = _similarity(1, (256, 4))
    out = zot.mpot(jnp.asarray(s), epsilon=epsilon, num_iterations=100)
    assert out.plan.dtype == jnp.float32 and out.score.dtype == jnp.float32
    expected = _pot_plan(s, epsilon, 100)
    cell = 1.0 / s.size
    assert np.abs(np.asarray(out.plan, np.float64) - expected).max() < 1e-4 * cell
    ref = zot.sinkhorn_log_reference(jnp.asarray(1.0 - s, jnp.float32), epsilon=epsilon, num_iterations=100)
    assert np.abs(np.asarray(ref, np.float64) - expected).max() < 1e-4 * cell


def test_marginals_score_and_entropy(x64):
    s = _similarity(2, (50, 4))
    out = zot.mpot(jnp.asarray(s), epsilon=0.05, num_iterations=300, dtype=jnp.float64)
    plan = np.asarray(out.plan)
    np.testing.assert_allclose(plan.sum(1), 1 / 50, atol=1e-12)  # f is updated last
    np.testing.assert_allclose(plan.sum(0), 1 / 4, atol=1e-8)
    assert float(out.marginal_error) < 1e-7
    np.testing.assert_allclose(out.score, 200 * (plan * s).sum(1), rtol=1e-12)
    np.testing.assert_allclose(out.entropy, -(plan * np.log(plan)).sum(), rtol=1e-10)
    # OT moves each pixel's mass towards its most similar prompts: the score beats the mean.
    assert float(out.score.mean()) > float(s.sum(1).mean()) + 0.1


def test_uniform_is_sum_over_prompts_exactly():
    s = jnp.asarray(_similarity(3, (2, 5, 30, 4)), jnp.float32)
    out = zot.mpot(s, epsilon=0.05, num_iterations=10, uniform=True)
    np.testing.assert_array_equal(out.score, s.sum(-1))
    np.testing.assert_array_equal(out.plan, np.full(s.shape, 1 / 120, np.float32))
    np.testing.assert_allclose(out.entropy, np.log(120.0), rtol=1e-6)
    assert out.score.shape == (2, 5, 30) and int(out.iterations.max()) == 0
    w = jnp.asarray(_similarity(4, (2, 5, 30)), jnp.float32)
    grad = jax.grad(lambda x: jnp.sum(w * zot.mpot(x, epsilon=0.05, num_iterations=10, uniform=True).score))(
        s
    )
    np.testing.assert_allclose(grad, jnp.broadcast_to(w[..., None], s.shape), rtol=1e-6)


@jax.jit
def _loss(s, w):
    return jnp.sum(
        w * zot.mpot(s, epsilon=0.1, num_iterations=60, backward="unrolled", dtype=jnp.float64).score
    )


@jax.jit
def _loss_stop_gradient(s, w):
    return jnp.sum(
        w
        * zot.mpot(
            s, epsilon=0.1, num_iterations=60, dtype=jnp.float64, backward="unrolled", plan_gradient=False
        ).score
    )


def test_unrolled_gradient_matchescentral_differences(x64):
    # Also guards ott 0.6.0's fixed-scan backward, which is wrong with more than one outer step.
    s = jnp.asarray(_similarity(5, (6, 3)))
    w = jnp.asarray(_similarity(6, (6,)))
    grad = np.asarray(jax.grad(_loss)(s, w))
    fd = central_differences(lambda x: _loss(x, w), s)
    np.testing.assert_allclose(grad, fd, atol=1e-7 * np.abs(fd).max())
    ref_grad = jax.grad(
        lambda x: jnp.sum(
            w * 18 * jnp.sum(zot.sinkhorn_log_reference(1 - x, epsilon=0.1, num_iterations=60) * x, -1)
        )
    )(s)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-9, atol=1e-12)


def test_stop_gradient_plan_matches_analytic_formula(x64):
    s = jnp.asarray(_similarity(7, (6, 3)))
    w = jnp.asarray(_similarity(8, (6,)))
    grad = jax.grad(_loss_stop_gradient)(s, w)
    plan = zot.mpot(s, epsilon=0.1, num_iterations=60, dtype=jnp.float64).plan
    np.testing.assert_allclose(grad, 18 * plan * w[:, None], rtol=1e-12)
    assert np.abs(grad - jax.grad(_loss)(s, w)).max() > 1e-3  # the two choices really differ


@pytest.mark.parametrize(
    "solver,tau,iterations", [("sinkhorn", 1.0, 3000), ("sinkhorn", 0.8, 3000), ("newton", 1.0, 30)]
)
def test_implicit_gradient_matches_central_differences_of_converged_solve(x64, solver, tau, iterations):
    s = jnp.asarray(_similarity(9, (2, 12, 3), scale=0.6))
    w = jnp.asarray(_similarity(10, (2, 12)))

    @jax.jit
    def loss(x):
        return jnp.sum(
            w
            * zot.mpot(
                x,
                epsilon=0.1,
                num_iterations=iterations,
                tau=tau,
                solver=solver,
                backward="implicit",
                dtype=jnp.float64,
            ).score
        )

    grad, fd = np.asarray(jax.grad(loss)(s)), central_differences(loss, s)
    np.testing.assert_allclose(grad, fd, atol=1e-6 * np.abs(fd).max())


@pytest.mark.parametrize("tau", [1.0, 0.7])
def test_implicit_gradient_matches_unrolled_when_converged(x64, tau):
    s = jnp.asarray(_similarity(9, (12, 4)))
    w = jnp.asarray(_similarity(10, (12,)))

    def loss(x, backward):
        return jnp.sum(
            w
            * zot.mpot(
                x, epsilon=0.1, num_iterations=400, tau=tau, backward=backward, dtype=jnp.float64
            ).score
        )

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    unrolled, implicit = grad(s, "unrolled"), grad(s, "implicit")
    np.testing.assert_allclose(implicit, unrolled, atol=1e-6 * np.abs(unrolled).max())
    truncated = jax.grad(
        lambda x: jnp.sum(
            w
            * zot.mpot(
                x, epsilon=0.1, num_iterations=3, tau=tau, backward="unrolled", dtype=jnp.float64
            ).score
        )
    )(s)
    assert np.abs(truncated - unrolled).max() > 1e-3 * np.abs(unrolled).max()  # a real check


def test_implicit_float32_matches_float64_at_convergence():
    s64 = _similarity(11, (256, 4), scale=0.3)
    w = _similarity(12, (256,))

    def grad(x, dtype, **kw):
        kw = {"num_iterations": 100, **kw}
        return jax.grad(
            lambda y: jnp.sum(w.astype(dtype) * zot.mpot(y, epsilon=0.05, dtype=dtype, **kw).score)
        )(x)

    implicit = grad(jnp.asarray(s64, jnp.float32), jnp.float32)
    with jax.enable_x64(True):
        exact = np.asarray(grad(jnp.asarray(s64), jnp.float64, num_iterations=1000, backward="unrolled"))
    assert bool(jnp.isfinite(implicit).all())
    np.testing.assert_allclose(implicit, exact, atol=1e-5 * np.abs(exact).max())


def test_implicit_memory_does_not_grow_with_iterations():
    s = jnp.zeros((8, 1024, 4), jnp.float32) + jnp.linspace(0, 0.3, 4)

    def temp_bytes(backward, iterations):
        fn = jax.grad(
            lambda x: jnp.sum(zot.mpot(x, epsilon=0.05, num_iterations=iterations, backward=backward).score)
        )
        return jax.jit(fn).lower(s).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes("implicit", 200) <= 1.05 * temp_bytes("implicit", 20)
    assert temp_bytes("unrolled", 200) > 5 * temp_bytes("unrolled", 20)


@pytest.mark.parametrize(
    "options", [dict(domain="kernel"), dict(domain="auto"), dict(solver="newton", num_iterations=3)]
)
def test_faster_forward_gives_the_100_iteration_log_plan(options):
    s = jnp.asarray(_similarity(13, (3, 1024, 4), scale=0.3), jnp.float32)
    reference = zot.mpot(s, epsilon=0.05, num_iterations=100, domain="log").plan
    out = zot.mpot(s, epsilon=0.05, **{"num_iterations": 100, **options})
    assert float(jnp.abs(out.plan - reference).max()) * 1024 * 4 < 1e-4  # cell-mass units
    three_iterations = zot.mpot(s, epsilon=0.05, num_iterations=3, domain="log").plan
    assert float(jnp.abs(three_iterations - reference).max()) * 1024 * 4 > 1e-4


def test_kernel_and_auto_domains_fall_back_to_log_without_float32_headroom(monkeypatch, capsys):
    monkeypatch.setattr(mpot_lib, "_warned", set())
    s = jnp.asarray(_similarity(14, (2, 64, 4)), jnp.float32)
    options = dict(epsilon=0.01, num_iterations=30)
    raw = jax.vmap(lambda c: solvers.sinkhorn_plan(c, jnp.ones(()), tau=1.0, threshold=0.0, **options)[0])
    log = zot.mpot(s, domain="log", **options).plan
    assert float(jnp.abs(raw(1.0 - s) - log).max()) * 64 * 4 > 0.1  # kernel iterations fail here
    for domain in ("auto", "kernel"):
        np.testing.assert_array_equal(zot.mpot(s, domain=domain, **options).plan, log)
    jax.effects_barrier()
    assert capsys.readouterr().err.count("domain='kernel' ran log-domain iterations instead") == 1


def test_unconverged_plans_are_reported_once(monkeypatch, capsys):
    monkeypatch.setattr(mpot_lib, "_warned", set())
    s = jnp.asarray(_similarity(16, (2, 256, 4), scale=50.0), jnp.float32)  # far beyond [-1, 1]
    error = float(zot.mpot(s, epsilon=0.05, num_iterations=5).marginal_error.max())
    assert error > zot.MARGINAL_ERROR_WARNING
    zot.warn_if_unconverged(1e-6, "step 1")  # converged: silent
    assert capsys.readouterr().err == ""
    for where in ("step 2", "step 3"):
        zot.warn_if_unconverged(error, where)
    err = capsys.readouterr().err
    assert err.count("MPOT did not converge") == 1 and "step 2" in err and "epsilon" in err


def test_threshold_stops_early_and_needs_the_implicit_backward():
    s = jnp.asarray(_similarity(15, (2, 256, 4), scale=0.3), jnp.float32)
    out = zot.mpot(s, epsilon=0.05, num_iterations=100, threshold=1e-5)
    assert 0 < int(out.iterations.max()) < 100 and float(out.marginal_error.max()) < 1e-4
    with pytest.raises(ValueError, match="backward='implicit'"):
        zot.mpot(s, epsilon=0.05, num_iterations=100, threshold=1e-5, backward="unrolled")


def test_newton_rejects_unbalanced():
    with pytest.raises(ValueError, match="balanced problems only"):
        zot.mpot(jnp.zeros((8, 3)), epsilon=0.05, num_iterations=3, tau=0.5, solver="newton")


def test_no_nan_at_small_epsilon_float32():
    s = jnp.asarray(_similarity(12, (2, 1024, 4)), jnp.float32)
    w = jnp.asarray(_similarity(13, (2, 1024)), jnp.float32)

    def loss(x):
        out = zot.mpot(x, epsilon=0.01, num_iterations=100)
        return jnp.sum(w * out.score), out

    (value, out), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(s)
    assert np.isfinite(float(value))
    for x in (out.score, out.plan, out.entropy, out.marginal_error, grad):
        assert bool(jnp.isfinite(x).all())
    np.testing.assert_allclose(out.plan.sum(-1), 1 / 1024, rtol=1e-3)
    assert float(jnp.abs(grad).max()) > 0


def test_unbalanced_relaxes_marginals_and_tau_one_is_balanced(x64):
    s = jnp.asarray(_similarity(14, (30, 4)))
    solve = jax.jit(
        lambda x, tau: zot.mpot(x, epsilon=0.05, num_iterations=300, tau=tau, dtype=jnp.float64),
        static_argnums=1,
    )
    np.testing.assert_array_equal(solve(s, 1.0).plan, solve(s, None).plan)
    errors = [float(solve(s, t).marginal_error) for t in (1.0, 0.99, 0.9, 0.5)]
    assert errors[0] < 1e-9 and all(e1 < e2 for e1, e2 in zip(errors, errors[1:], strict=False))


def test_unbalanced_matches_pot_and_reference(x64):
    s = _similarity(15, (20, 3))
    epsilon, tau = 0.1, 0.8
    out = zot.mpot(jnp.asarray(s), epsilon=epsilon, tau=tau, num_iterations=500, dtype=jnp.float64)
    ref = zot.sinkhorn_log_reference(jnp.asarray(1 - s), epsilon=epsilon, tau=tau, num_iterations=500)
    np.testing.assert_allclose(out.plan, ref, atol=1e-12)
    rho = tau * epsilon / (1 - tau)  # ott's tau = rho / (rho + epsilon)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT warns that reg_type='entropy' ignores c
        expected = pot.unbalanced.sinkhorn_unbalanced(
            np.full(20, 1 / 20),
            np.full(3, 1 / 3),
            1 - s,
            epsilon,
            rho,
            reg_type="entropy",
            numItermax=5000,
            stopThr=1e-14,
        )
    np.testing.assert_allclose(out.plan, expected, atol=1e-8 / s.size)


@pytest.mark.parametrize("shape", [(2, 3, 16, 4), (2, 2, 3, 16, 4)])
def test_batched_equals_per_problem(shape):
    s = jnp.asarray(_similarity(16, shape), jnp.float32)
    out = jax.jit(lambda x: zot.mpot(x, epsilon=0.05, num_iterations=30))(s)
    assert out.score.shape == shape[:-1] and out.plan.shape == shape
    assert out.entropy.shape == shape[:-2] and out.iterations.shape == shape[:-2]
    solve_one = jax.jit(lambda x: zot.mpot(x, epsilon=0.05, num_iterations=30))
    for idx in np.ndindex(*shape[:-2]):
        single = solve_one(s[idx])
        np.testing.assert_allclose(out.plan[idx], single.plan, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(out.score[idx], single.score, rtol=1e-5, atol=1e-6)


def test_bf16_input_is_solved_in_float32():
    s = jnp.asarray(_similarity(17, (16, 4)), jnp.bfloat16)
    out = zot.mpot(s, epsilon=0.05, num_iterations=20)
    assert out.score.dtype == jnp.float32 and out.plan.dtype == jnp.float32


def test_remat_reference_gradient_is_unchanged():
    c = jnp.asarray(1 - _similarity(18, (3, 16, 4)), jnp.float32)

    def loss(x, remat):
        return jnp.sum(zot.sinkhorn_log_reference(x, epsilon=0.05, num_iterations=20, remat=remat) * x)

    expected = jax.grad(loss)(c, False)
    np.testing.assert_allclose(jax.grad(loss)(c, True), expected, atol=1e-5 * float(jnp.abs(expected).max()))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epsilon=None, num_iterations=10), "epsilon is required"),
        (dict(epsilon=0.0, num_iterations=10), "epsilon must be > 0"),
        (dict(epsilon=-0.1, num_iterations=10), "epsilon must be > 0"),
        (dict(epsilon=0.05, num_iterations=0), "num_iterations"),
        (dict(epsilon=0.05, num_iterations=2.5), "num_iterations"),
        (dict(epsilon=0.05, num_iterations=10, tau=0.0), "tau"),
        (dict(epsilon=0.05, num_iterations=10, tau=1.5), "tau"),
        (dict(epsilon=0.05, num_iterations=10, solver="lbfgs"), "Unknown OT solver"),
        (dict(epsilon=0.05, num_iterations=10, backward="cg"), "backward must be one of"),
        (dict(epsilon=0.05, num_iterations=10, domain="fft"), "domain must be one of"),
        (dict(epsilon=0.05, num_iterations=10, threshold=-1.0), "threshold must be >= 0"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        zot.mpot(jnp.zeros((4, 2)), **kwargs)


def test_bad_shape_raises():
    with pytest.raises(ValueError, match=r"\[\.\.\., M, N\]"):
        zot.mpot(jnp.zeros((4,)), epsilon=0.05, num_iterations=10)


def test_unbalanced_score_uses_the_plan_at_unit_mass():
    # Cosines around 0.3 everywhere: cost ~0.7, so an unbalanced plan keeps little mass.
    s = jnp.asarray(0.3 + 0.05 * _similarity(7, (2, 64, 4)), jnp.float32)
    out = zot.mpot(s, epsilon=0.05, num_iterations=50, tau=0.5)
    mass = np.asarray(out.plan.sum((-1, -2)))
    assert np.all(mass < 0.5)  # the raw plan lost most of its mass ...
    expected = 64 * 4 * np.einsum("bmn,bmn->bm", np.asarray(out.plan) / mass[:, None, None], np.asarray(s))
    np.testing.assert_allclose(out.score, expected, rtol=1e-5)
    balanced = zot.mpot(s, epsilon=0.05, num_iterations=50)
    # ... but the score stays on the balanced scale (N times a weighted mean of S).
    np.testing.assert_allclose(out.score.mean(), balanced.score.mean(), rtol=0.05)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 9])  # 9: past UNROLLED_MAX, LAPACK
def test_spd_solve_matches_numpy_batched(x64, n):
    rng = np.random.default_rng(n)
    factors = rng.normal(size=(50, n, n))
    matrices = factors @ factors.transpose(0, 2, 1) + 0.1 * np.eye(n)
    rhs = rng.normal(size=(50, n))
    got = jax.jit(jax.vmap(spd.solve))(jnp.asarray(matrices), jnp.asarray(rhs))
    np.testing.assert_allclose(got, np.linalg.solve(matrices, rhs[..., None])[..., 0], rtol=1e-9, atol=1e-9)


def test_spd_solve_is_nan_not_wrong_on_an_indefinite_matrix():
    x = spd.solve(jnp.asarray([[1.0, 2.0], [2.0, 1.0]]), jnp.asarray([1.0, 0.0]))
    assert bool(jnp.isnan(x).any())


def test_newton_float32_reaches_the_converged_plan_with_a_starved_prompt():
    # Sharp similarities (cost range / epsilon = 40) and one prompt that every pixel likes least:
    # the case that made undamped Newton diverge. 10 float32 steps must reach POT's converged
    # float64 plan, finite, with exact marginals.
    s = _similarity(21, (3, 64, 4))
    s[..., 3] = s[..., :3].min(-1) - 0.5
    out = zot.mpot(jnp.asarray(s, jnp.float32), epsilon=0.05, num_iterations=10, solver="newton")
    assert bool(jnp.isfinite(out.plan).all())
    assert float(out.marginal_error.max()) < 1e-4
    for i in range(3):
        reference = pot.sinkhorn(
            np.full(64, 1 / 64),
            np.full(4, 1 / 4),
            1.0 - s[i],
            reg=0.05,
            method="sinkhorn_log",
            numItermax=20_000,
            stopThr=1e-13,
        )
        assert np.abs(np.asarray(out.plan[i]) - reference).max() * 64 * 4 < 1e-4
