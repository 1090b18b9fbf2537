"""`train_seeds` / `evaluate_seeds`: a seed of the vmapped stack is that seed run alone.

"Alone" is what `loop.train` does for one seed, without its files: the model built for that seed,
`step.init_state`, the jitted (not vmapped) `make_train_step`, that seed's data iterator, then
`evaluator.evaluate` image by image.
"""

import jax
import numpy as np
import pytest

from configs import synthetic
from zegot_jax.data.setup import DataSetup
from zegot_jax.evaluation import evaluator
from zegot_jax.evaluation import seed_scores as eval_seeds
from zegot_jax.models import build as build_lib
from zegot_jax.models import functional
from zegot_jax.train import optim
from zegot_jax.train import seeds as train_seeds
from zegot_jax.train import step as step_lib

STEPS = 2


def _alone(config, seed, clip):
    """Losses `[STEPS]` and params of `seed` trained by itself, as `loop.train` trains it."""
    config = config.copy_and_resolve_references()
    config.seed = seed
    data = DataSetup.from_config(config)
    parts = functional.split_model(build_lib.build_model(config, clip))
    tx, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
    state = step_lib.init_state(parts.params, tx, seed)
    step = jax.jit(step_lib.make_train_step(parts.graphdef, tx, schedule, config))
    text = functional.merge(parts.graphdef, parts.params, parts.frozen).text_inputs(
        data.train_classes, config.clip.text_context_length
    )
    batches = data.train_iterator(config.train.global_batch_size, seed=seed)
    losses = []
    for _ in range(STEPS):
        state, metrics = step(state, parts.frozen, next(batches), text)
        losses.append(float(metrics["loss"]))
    return np.array(losses), parts, state["params"]


def test_a_vmapped_seed_is_that_seed_run_alone():
    config = synthetic.get_config("smoke")
    config.train.num_steps = STEPS
    config.loss.per_image = False  # the same loss value; about 3 s less to compile, twice
    clip = build_lib.load_clip(config)
    runs = train_seeds.train_seeds(config, (3, 1), clip=clip)
    assert runs.losses.shape == (STEPS, 2) and runs.seeds == (3, 1)
    assert not np.allclose(runs.losses[:, 0], runs.losses[:, 1])  # the seeds differ
    losses, parts, params = _alone(config, 1, clip)
    np.testing.assert_allclose(runs.losses[:, 1], losses, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        train_seeds.unstack(runs.params, 1),
        params,
    )

    data = DataSetup.from_config(config)
    penalty = data.seen_penalty(config)
    together = eval_seeds.evaluate_seeds(
        config,
        runs.graphdef,
        runs.params,
        runs.frozen,
        data.eval_iterator(),
        data.class_names,
        data.unseen,
        seen_penalty=penalty,
        num_seeds=2,
    )
    alone = evaluator.evaluate(
        config,
        parts.graphdef,
        params,
        parts.frozen,
        data.eval_iterator(),
        data.class_names,
        data.unseen,
        seen_penalty=penalty,
    )
    for key in ("miou_seen", "miou_unseen", "hiou", "pixel_acc"):
        assert abs(together[1][key] - alone[key]) <= 0.005, key
    assert together[1]["num_images"] == alone["num_images"] == config.synthetic.eval_images


def test_bad_seeds_fail_before_building():
    config = synthetic.get_config("smoke")
    for seeds in ((), (1, 1)):
        with pytest.raises(ValueError, match="distinct seeds"):
            train_seeds.train_seeds(config, seeds)
