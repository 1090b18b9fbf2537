"""End to end: a transport registered in this process trains, is saved by name, loads back."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import PIL.Image
import pytest
from flax import nnx
from inference_fixtures import random_image, save_run, smoke_config

import zegot_jax.ot as zot
from zegot_jax import cli, inference
from zegot_jax.configs import checks as config_checks
from zegot_jax.models import functional
from zegot_jax.models.zegot import ZegOT
from zegot_jax.runs import saved
from zegot_jax.train import step as step_lib

VOCAB = ["cat", "dog", "grass"]
TEMPERATURE = 0.2
GRIDS = []  # the grids the toy transport was traced with


def _toy(problem: zot.Problem, settings: zot.Settings) -> jax.Array:
    """Each pixel's mass goes to the prompts by a softmax of its similarities."""
    GRIDS.append(problem.grid)
    m = problem.similarity.shape[0]
    return jax.nn.softmax(problem.similarity / settings.options["temperature"], axis=1) / m


@pytest.fixture
def toy_config():
    zot.register_transport("toy_plugin", _toy, options={"temperature": 1.0})
    config = smoke_config()
    config.model.ot.solver = "toy_plugin"
    config.model.ot.options = ml_collections.ConfigDict({"temperature": TEMPERATURE})
    yield config
    zot.unregister_transport("toy_plugin")


def test_train_step_uses_the_registered_transport(toy_config, tiny_clip):
    config_checks.check(toy_config, num_devices=1)
    model = ZegOT(tiny_clip, toy_config.model, rngs=nnx.Rngs(0))
    parts = functional.split_model(model)
    tx = optax.adamw(1e-2)
    state = step_lib.init_state(parts.params, tx, 0)
    step = jax.jit(step_lib.make_train_step(parts.graphdef, tx, optax.constant_schedule(1e-2), toy_config))
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    labels = jnp.asarray(np.random.default_rng(0).integers(0, 3, (2, 32, 32)), jnp.int32)
    GRIDS.clear()
    new_state, metrics = step(
        state,
        parts.frozen,
        {"image": images, "label": labels},
        model.text_inputs(VOCAB, toy_config.clip.text_context_length),
    )
    patch = tiny_clip.spec.patch_size
    assert GRIDS and set(GRIDS) == {(32 // patch, 32 // patch)}
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    moved = jax.tree.map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), parts.params, new_state["params"]
    )
    assert all(jax.tree.leaves(moved))


def test_saved_run_remembers_the_transport_and_refuses_to_load_without_it(
    toy_config, tiny_clip, tmp_path, capsys
):
    workdir = str(tmp_path / "run")
    save_run(workdir, toy_config, tiny_clip)
    segmenter = inference.Segmenter.from_run(workdir)
    assert segmenter.config.model.ot.solver == "toy_plugin"
    assert segmenter.config.model.ot.options.temperature == TEMPERATURE
    result = segmenter.segment(random_image(40, 56), VOCAB, details=True)  # sliding windows
    expected = jax.nn.softmax(jnp.asarray(result.similarity) / TEMPERATURE, axis=-1)
    np.testing.assert_allclose(result.plan, expected, rtol=1e-4, atol=1e-6)  # the toy's plan
    evaluated = saved.run_config(smoke_config(), workdir)  # what evaluate.py scores with
    assert evaluated.model.ot.solver == "toy_plugin"
    assert evaluated.model.ot.options.to_dict() == {"temperature": TEMPERATURE}

    zot.unregister_transport("toy_plugin")  # a fresh process that never registered it
    message = "trained with model.ot.solver='toy_plugin', which is not registered"
    with pytest.raises(ValueError, match=message):
        inference.Segmenter.from_run(workdir)
    with pytest.raises(ValueError, match=r"register_transport\('toy_plugin', fn\)"):
        saved.run_config(smoke_config(), workdir)
    image = tmp_path / "image.png"
    PIL.Image.fromarray(random_image(8, 8)).save(image)
    assert cli.main(["segment", str(image), "--run", workdir, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    plugin = tmp_path / "my_transport.py"  # what `zegot-jax segment --plugin` runs first
    plugin.write_text(
        "import zegot_jax.ot as zot\nfrom test_transport_plugin import _toy\n"
        "zot.register_transport('toy_plugin', _toy, options={'temperature': 1.0})\n"
    )
    cli.load_plugins([str(plugin)])
    assert inference.Segmenter.from_run(workdir).config.model.ot.solver == "toy_plugin"
    with pytest.raises(ValueError, match="cannot import"):
        cli.load_plugins(["no_such_module_here"])
