"""PromptLearner: the prefix-shared encoding and text remat give the full computation's values."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zegot_jax.data import class_names
from zegot_jax.models import prompts, zegot

NAMES = class_names.VOC20[:6]  # names of 1 to 3 tokens: EOT at different positions


def _rel(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _table(num_context, names=NAMES, context_length=16):
    tokens, eot = prompts.prompt_token_table(names, num_context=num_context, context_length=context_length)
    return jnp.asarray(tokens), jnp.asarray(eot)


def _compiled(clip, tokens, eot, *, prefix_shared, remat, num_prompts=3, num_context=4):
    """The jitted loss-and-gradient of one PromptLearner setting (same contexts for all).

    Returns (compiled function, its contexts state); the function gives
    `((loss, features [K, N, D]), grad)`.
    """
    learner = prompts.PromptLearner(
        num_prompts,
        num_context,
        clip.spec.text_width,
        init_std=0.5,
        rngs=nnx.Rngs(1),
        prefix_shared=prefix_shared,
        remat=remat,
    )
    graphdef, params, rest = nnx.split(learner, prompts.Trainable, ...)
    weights = jax.random.normal(jax.random.key(2), (len(eot), num_prompts, clip.spec.embed_dim))

    def loss(params):
        feats = nnx.merge(graphdef, params, rest)(clip, tokens, eot)
        return jnp.sum(weights * feats), feats

    grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    return grad_fn.lower(params).compile(), params


@pytest.fixture(scope="module")
def settings(tiny_clip):
    """(prefix_shared, remat) -> (compiled, ((loss, features), gradient of the contexts))."""
    tokens, eot = _table(4)
    out = {}
    for key in [(False, False), (True, False), (False, True), (True, True)]:
        compiled, params = _compiled(tiny_clip, tokens, eot, prefix_shared=key[0], remat=key[1])
        out[key] = compiled, compiled(params)
    return out


def _features_and_grad(result):
    (_, feats), grad = result
    return feats, grad["context"][...]


def test_prefix_shared_gives_the_full_features_and_gradients(settings):
    feats, grad = _features_and_grad(settings[True, False][1])
    full_feats, full_grad = _features_and_grad(settings[False, False][1])
    assert feats.shape == (len(NAMES), 3, 24)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=-1), 1.0, rtol=1e-6)
    assert _rel(feats, full_feats) < 1e-5
    assert np.abs(full_grad).max() > 0 and _rel(grad, full_grad) < 1e-5
    assert np.abs(feats[:, 0] - feats[:, 1]).max() > 1e-3  # the prompts differ


@pytest.mark.parametrize("prefix_shared", [False, True])
def test_text_remat_leaves_the_gradients_unchanged(settings, prefix_shared):
    remat, remat_result = settings[prefix_shared, True]
    plain, plain_result = settings[prefix_shared, False]
    feats, grad = _features_and_grad(remat_result)
    plain_feats, plain_grad = _features_and_grad(plain_result)
    assert _rel(feats, plain_feats) < 1e-6 and _rel(grad, plain_grad) < 1e-6
    # Rematerialised: the backward recomputes the blocks (more FLOPs), storing less.
    assert remat.cost_analysis()["flops"] > plain.cost_analysis()["flops"]
    assert remat.memory_analysis().temp_size_in_bytes < plain.memory_analysis().temp_size_in_bytes


def test_prefix_shared_computes_less(settings):
    shared, full = settings[True, False][0], settings[False, False][0]
    assert shared.cost_analysis()["flops"] < full.cost_analysis()["flops"]


def test_config_fields_reach_the_prompt_learner(smoke_config, tiny_clip):
    """`model.prefix_shared` and `model.text_remat` switch the path; the text features agree."""
    feats = {}
    for shared in (False, True):
        config = copy.deepcopy(smoke_config)
        config.model.prefix_shared, config.model.text_remat = shared, not shared
        model = zegot.ZegOT(tiny_clip, config.model, rngs=nnx.Rngs(0))
        assert (model.prompt_learner.prefix_shared, model.prompt_learner.remat) == (shared, not shared)
        feats[shared] = model.text_features(model.text_inputs(NAMES, 16))
    assert _rel(feats[True], feats[False]) < 1e-5
    del smoke_config.model.prefix_shared, smoke_config.model.text_remat  # a run saved before them
    old = zegot.ZegOT(tiny_clip, smoke_config.model, rngs=nnx.Rngs(0))
    assert (old.prompt_learner.prefix_shared, old.prompt_learner.remat) == (True, False)
