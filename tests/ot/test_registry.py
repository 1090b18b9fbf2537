"""The transport plug-in: registering a function for one problem and running it through `mpot`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gradcheck import central_differences

import zegot_jax.ot as zot


def _row_softmax(problem: zot.Problem, settings: zot.Settings):
    m = problem.similarity.shape[0]
    plan = jax.nn.softmax(problem.similarity / settings.options["temperature"], axis=1) / m
    return plan, {"peak": plan.max(), "iterations": 7}


def _from_features(problem: zot.Problem, settings: zot.Settings):
    """Reads the grid and the features; reports how well they agree with the similarity."""
    h, w = problem.grid
    cosines = problem.pixels @ problem.prompts.T  # [M, N]
    plan = jax.nn.softmax(cosines / settings.epsilon, axis=1) / (h * w)
    return plan, {
        "mismatch": jnp.abs(cosines - problem.similarity).max(),
        "last_row": (jnp.arange(h * w) // w).max(),
    }


def _loop(problem: zot.Problem, settings: zot.Settings) -> jax.Array:
    return zot.sinkhorn_log_reference(
        problem.cost, epsilon=settings.epsilon, num_iterations=settings.num_iterations
    )


@pytest.fixture
def registered():
    zot.register_transport("test_softmax", _row_softmax, options={"temperature": 0.1})
    zot.register_transport("test_features", _from_features)
    zot.register_transport("test_loop_implicit", _loop, balanced_entropic=True)
    zot.register_transport("test_loop", _loop)
    yield
    for name in ("test_softmax", "test_features", "test_loop_implicit", "test_loop"):
        zot.unregister_transport(name)


def _similarity(seed, shape):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape)


def test_vmapped_over_leading_dims_with_options_score_and_diagnostics(registered):
    s = jnp.asarray(_similarity(0, (2, 3, 10, 4)), jnp.bfloat16)
    out = zot.mpot(s, epsilon=0.05, num_iterations=1, solver="test_softmax", options={"temperature": 0.5})
    s32 = np.asarray(s, np.float32)
    expected = np.asarray(jax.nn.softmax(s32 / 0.5, axis=-1)) / 10
    assert out.plan.dtype == jnp.float32 and out.plan.shape == (2, 3, 10, 4)
    np.testing.assert_allclose(out.plan, expected, rtol=1e-6)
    np.testing.assert_allclose(out.score, 40 * (expected * s32).sum(-1), rtol=1e-5, atol=1e-6)
    assert out.diagnostics["peak"].shape == (2, 3) and np.all(np.asarray(out.iterations) == 7)
    default = zot.mpot(s, epsilon=0.05, num_iterations=1, solver="test_softmax").plan
    assert float(jnp.abs(default - out.plan).max()) > 1e-3  # the declared default 0.1 is used
    with pytest.raises(ValueError, match=r"does not take; its options: temperature"):
        zot.mpot(s, epsilon=0.05, num_iterations=1, solver="test_softmax", options={"temp": 1.0})


def test_grid_and_features_reach_each_problem(registered):
    pixels = jnp.asarray(_similarity(5, (2, 3, 6, 8)), jnp.float32)  # [L, B, M, D]
    prompts = jnp.asarray(_similarity(6, (2, 3, 5, 4, 8)), jnp.float32)  # [L, B, K, N, D]
    s = jnp.einsum("lbmd,lbknd->lbkmn", pixels, prompts)
    out = jax.jit(
        lambda *a: zot.mpot(
            a[0],
            epsilon=1.0,
            num_iterations=1,
            solver="test_features",
            grid=(2, 3),
            pixels=a[1],
            prompts=a[2],
        )
    )(s, pixels, prompts)
    assert out.diagnostics["mismatch"].shape == (2, 3, 5)
    assert float(out.diagnostics["mismatch"].max()) < 1e-5
    assert np.all(np.asarray(out.diagnostics["last_row"]) == 1)
    with pytest.raises(ValueError, match="grid must be"):
        zot.mpot(
            s,
            epsilon=1.0,
            num_iterations=1,
            solver="test_features",
            grid=(4, 4),
            pixels=pixels,
            prompts=prompts,
        )
    with pytest.raises(ValueError, match="prefix of the similarity"):
        zot.mpot(
            s,
            epsilon=1.0,
            num_iterations=1,
            solver="test_features",
            grid=(2, 3),
            pixels=pixels[:, :1],
            prompts=prompts,
        )


def test_gradient_is_autodiff_through_the_transport(registered):
    with jax.enable_x64(True):
        s = jnp.asarray(_similarity(1, (5, 3)))
        w = jnp.asarray(_similarity(2, (5,)))
        loss = jax.jit(
            lambda x: jnp.sum(
                w * zot.mpot(x, epsilon=0.1, num_iterations=1, solver="test_softmax", dtype=jnp.float64).score
            )
        )
        grad = np.asarray(jax.grad(loss)(s))
        fd = central_differences(loss, s)
        np.testing.assert_allclose(grad, fd, atol=1e-7 * np.abs(fd).max())


def test_implicit_backward_only_for_balanced_entropic_transports(registered):
    with jax.enable_x64(True):
        s = jnp.asarray(_similarity(3, (12, 3)))
        w = jnp.asarray(_similarity(4, (12,)))

        def grad(solver, backward):  # 5 iterations: far from converged, so the two backwards differ
            return np.asarray(
                jax.jit(
                    jax.grad(
                        lambda x: jnp.sum(
                            w
                            * zot.mpot(
                                x,
                                epsilon=0.1,
                                num_iterations=5,
                                solver=solver,
                                backward=backward,
                                dtype=jnp.float64,
                            ).score
                        )
                    )
                )(s)
            )

        def score(x, plan):
            return jnp.sum(w * 36 * jnp.sum(plan * x, -1))

        plan = zot.sinkhorn_log_reference(1 - s, epsilon=0.1, num_iterations=5)
        unrolled = np.asarray(
            jax.grad(lambda x: score(x, zot.sinkhorn_log_reference(1 - x, epsilon=0.1, num_iterations=5)))(s)
        )
        # The implicit backward of that plan: dL/dS = dL/dS at a fixed plan - dL/dC via the plan.
        at_plan, plan_grad = jax.grad(score, argnums=(0, 1))(s, plan)
        implicit = np.asarray(
            at_plan - zot.implicit.plan_cotangent_to_cost(plan, plan_grad, epsilon=0.1, tau=1.0)
        )
        assert np.abs(implicit - unrolled).max() > 1e-3 * np.abs(unrolled).max()
        np.testing.assert_allclose(grad("test_loop_implicit", "implicit"), implicit, atol=1e-10)
        np.testing.assert_allclose(grad("test_loop", "implicit"), unrolled, atol=1e-10)


def test_bad_outputs_fail_clearly(registered):
    zot.register_transport("test_bad_shape", lambda p, s: p.similarity.T)
    zot.register_transport("test_nan", lambda p, s: p.similarity * jnp.nan)
    try:
        s = jnp.zeros((2, 6, 3))
        with pytest.raises(ValueError, match=r"'test_bad_shape' returned a plan of shape \(3, 6\)"):
            jax.jit(lambda x: zot.mpot(x, epsilon=0.1, num_iterations=1, solver="test_bad_shape").score)(s)
        with pytest.raises(ValueError, match="36 non-finite or negative plan cells"):
            zot.mpot(s, epsilon=0.1, num_iterations=1, solver="test_nan")
    finally:
        zot.unregister_transport("test_bad_shape")
        zot.unregister_transport("test_nan")


def test_registry_names_and_protections(registered):
    names = zot.registered_transports()
    assert names[:2] == ("newton", "sinkhorn") and "test_softmax" in names
    with pytest.raises(
        ValueError,
        match=r"Unknown OT solver 'nope'; registered: newton, "
        r"sinkhorn, .*register_transport\('nope', fn\)",
    ):
        zot.mpot(jnp.zeros((4, 2)), epsilon=0.1, num_iterations=1, solver="nope")
    with pytest.raises(ValueError, match="built-in"):
        zot.register_transport("newton", _loop)

    @zot.register_transport("test_decorated", options={"k": 2})
    def decorated(problem, settings):
        return jnp.full(problem.similarity.shape, 1.0 / problem.similarity.size)

    try:
        assert zot.get_transport("test_decorated").fn is decorated
        assert zot.default_options("test_decorated") == {"k": 2}
    finally:
        zot.unregister_transport("test_decorated")
    assert "test_decorated" not in zot.registered_transports()
