"""The OT lab's pieces.

Every variant the notebook lists changes the computation; seeds, ranking, the plans figure.
"""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import nbformat
import numpy as np
import pytest

from zegot_jax import ot
from zegot_jax.configs import synthetic
from zegot_jax.configs.overrides import override
from zegot_jax.evaluation.segmenter import SegmentationResult
from zegot_jax.experiments import ot_lab
from zegot_jax.models import zegot

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "ot_playground.ipynb"
H, W, K, N, D = 3, 4, 2, 3, 8  # a 3 x 4 token grid, 2 classes, 3 prompts


def _score_and_gradient(ot_config) -> tuple[np.ndarray, np.ndarray]:
    """`sum(score * r)` of `zegot.transport` at a tiny shape, and its gradient w.r.t. `S`."""
    keys = jax.random.split(jax.random.key(0), 3)
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    pixels = unit(jax.random.normal(keys[0], (1, 1, H * W, D)))  # [L, B, M, D]
    prompts = unit(jax.random.normal(keys[1], (1, 1, K, N, D)))  # [L, B, K, N, D]
    similarity = jnp.einsum("lbmd,lbknd->lbkmn", pixels, prompts)
    weights = jax.random.normal(keys[2], (1, 1, K, H * W))

    def loss(s):
        out = zegot.transport(s, ot_config, grid=(H, W), pixels=pixels, prompts=prompts)
        return jnp.sum(out.score * weights)

    value, grad = jax.jit(jax.value_and_grad(loss))(similarity)
    return np.asarray(value), np.asarray(grad)


@functools.cache
def _default() -> tuple[np.ndarray, np.ndarray]:
    return _score_and_gradient(synthetic.get_config().model.ot)


def _changes(overrides: dict) -> tuple[float, float]:
    """Largest relative change of the forward value and of the gradient against the default.

    The default is the synthetic config the notebook starts from.
    """
    value0, grad0 = _default()
    value, grad = _score_and_gradient(override(synthetic.get_config(), overrides).model.ot)
    return (
        abs(float(value - value0)) / abs(float(value0)),
        float(np.abs(grad - grad0).max() / np.abs(grad0).max()),
    )


@pytest.fixture
def notebook_transport():
    """The transport the notebook writes, registered from the notebook's own cell."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (cell,) = [c for c in nb.cells if "transport" in c.metadata.get("tags", [])]
    before = set(ot.registered_transports())
    exec(compile(cell.source, str(NOTEBOOK), "exec"), {})  # noqa: S102 (the notebook's cell)
    (name,) = set(ot.registered_transports()) - before
    yield name
    ot.unregister_transport(name)


def test_the_tour_starts_from_the_default_and_changes_only_the_transport():
    assert next(iter(ot_lab.TOUR)) == ot_lab.DEFAULT and ot_lab.TOUR[ot_lab.DEFAULT] == {}
    assert all(k.startswith("model.ot.") for v in ot_lab.TOUR.values() for k in v)


@pytest.mark.parametrize("name", [n for n in ot_lab.TOUR if n != ot_lab.DEFAULT])
def test_every_toured_variant_changes_the_forward_or_the_gradient(name):
    forward, gradient = _changes(ot_lab.TOUR[name])
    assert max(forward, gradient) > 1e-3, (name, forward, gradient)


def test_the_notebook_transport_changes_the_forward_and_keeps_the_marginals(notebook_transport):
    forward, gradient = _changes({"model.ot.solver": notebook_transport})
    assert forward > 1e-3 and gradient > 1e-3, (forward, gradient)
    s = jax.random.uniform(jax.random.key(1), (H * W, N), minval=-1.0)
    out = ot.mpot(s, epsilon=0.05, num_iterations=200, solver=notebook_transport, grid=(H, W))
    np.testing.assert_allclose(out.plan.sum(1), 1 / (H * W), rtol=1e-4)
    np.testing.assert_allclose(out.plan.sum(0), 1 / N, rtol=1e-4)


def test_plan_figure_draws_a_row_per_transport_and_a_column_per_prompt():
    plan = np.random.default_rng(0).dirichlet(np.ones(N), size=(1, K, H, W)).astype(np.float32)
    result = SegmentationResult(
        class_names=("cat", "dog"),
        image=np.zeros((6, 8, 3), np.uint8),
        label_map=np.zeros((6, 8), np.int32),
        scores=None,
        layers=(3,),
        similarity=plan,
        plan=plan,
    )
    fig = ot_lab.plan_figure({"MPOT": result, "mine": result}, "dog")
    assert len(fig.axes) == 2 * N + 1  # and one colour bar
    assert fig.axes[0].get_ylabel() == "MPOT" and fig.axes[N].get_ylabel() == "mine"
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), plan[0, 1, ..., 1])
    with pytest.raises(ValueError, match="no plan"):
        ot_lab.plan_figure({"MPOT": result, "bare": result._replace(plan=None)}, "dog")
