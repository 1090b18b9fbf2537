"""The segmenter: shapes at full size (no FLOPs), frozen-by-construction, variants, bad input."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import common
from zegot_jax import clip as clip_lib
from zegot_jax.data import class_names
from zegot_jax.models import functional, zegot
from zegot_jax.models.prompts import Trainable
from zegot_jax.train import step as step_lib

VOC = class_names.VOC20


def _model(config, clip):
    return zegot.ZegOT(clip, config.model, rngs=nnx.Rngs(0))


def _images(clip, batch=2, grid=4, seed=0):
    size = clip.spec.patch_size * grid
    return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def test_full_size_shapes_with_eval_shape():
    """ViT-B/16 at 512x512, K=171, N=4, three layers: shapes only, no FLOPs spent."""
    config = common.get_config()
    spec = clip_lib.get_spec("ViT-B/16")

    def build():
        return zegot.ZegOT(clip_lib.CLIP(spec, rngs=nnx.Rngs(0)), config.model, rngs=nnx.Rngs(1))

    abstract = nnx.eval_shape(build)
    graphdef, params, frozen = nnx.split(abstract, Trainable, ...)
    num_trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    # 4 x 8 x 512 context values + 3 x (1024 x 512 + 512) DLFA weights + temperature and bias.
    assert num_trainable == 4 * 8 * 512 + 3 * (1024 * 512 + 512) + 2 == 1_590_786
    k, n = 171, 4
    text = jax.ShapeDtypeStruct((k, n, spec.embed_dim), jnp.float32)
    images = jax.ShapeDtypeStruct((2, 512, 512, 3), jnp.float32)

    def forward(p, f, x, t):
        return nnx.merge(graphdef, p, f).segment(x, t)

    out = jax.eval_shape(forward, params, frozen, images, text)
    assert out.logits.shape == (2, k, 32, 32)
    assert out.layer_logits.shape == (3, 2, k, 32, 32)
    assert out.similarity.shape == out.plan.shape == (3, 2, k, 32, 32, n)
    assert out.logits.dtype == jnp.float32


def test_forward_and_text_inputs(smoke_config, tiny_clip):
    model = _model(smoke_config, tiny_clip)
    inputs = model.text_inputs(VOC, smoke_config.clip.text_context_length)
    out = model(_images(tiny_clip), inputs)
    k, n = len(VOC), smoke_config.model.num_prompts
    assert out.logits.shape == (2, k, 4, 4)
    assert np.isfinite(np.asarray(out.logits)).all()
    # Each pixel's plan row is a distribution over the prompts; the logits average the layers.
    np.testing.assert_allclose(np.asarray(out.plan.sum(-1)), 1.0, atol=1e-3)
    np.testing.assert_allclose(out.logits, out.layer_logits.mean(0), rtol=1e-6)
    assert out.plan.shape[-1] == n


def test_no_ot_variant_sums_similarities(smoke_config, tiny_clip):
    smoke_config.model.ot.enabled = False
    model = _model(smoke_config, tiny_clip)
    out = model(_images(tiny_clip), model.text_inputs(VOC[:5], 16))
    n = smoke_config.model.num_prompts  # logits = 10 * score / N - 10 at initialisation
    np.testing.assert_allclose(out.layer_logits, 10 * out.similarity.sum(-1) / n - 10, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "change",
    [
        {"num_prompts": 1},
        {"prompts": "templates"},
        {"alignment": False},
        {"dense_mode": "value"},
        {"ot.plan_gradient": False},
        {"ot.tau": 0.8, "ot.solver": "sinkhorn"},
        {"ot.solver": "sinkhorn", "ot.domain": "kernel", "ot.threshold": 1e-4},
        {"ot.solver": "sinkhorn", "ot.backward": "unrolled"},
        {"ot.epsilon": 0.1, "ot.num_iterations": 3},
        {"layers": (2,)},
        {"prompt_init": "random"},
        {"alignment_residual": False},
        {"learn_temperature": False},
        {"text_consistency_weight": 8.0},
    ],
)
def test_variants_are_one_config_change(smoke_config, tiny_clip, change):
    config = copy.deepcopy(smoke_config)
    for key, value in change.items():
        section = config.model
        *path, field = key.split(".")
        for p in path:
            section = section[p]
        section[field] = value
    model = _model(config, tiny_clip)
    out = model(_images(tiny_clip), model.text_inputs(VOC[:3], 16))
    assert np.isfinite(np.asarray(out.logits)).all()
    expected_n = (
        len(config.model.templates) if config.model.prompts == "templates" else config.model.num_prompts
    )
    assert out.plan.shape[-1] == expected_n
    assert out.layer_logits.shape[0] == len(config.model.layers)


def test_clip_is_frozen_by_construction(smoke_config, tiny_clip):
    """An optimizer step changes only Trainable variables; CLIP stays bit-identical."""
    smoke_config.optim.warmup_steps = 0
    model = _model(smoke_config, tiny_clip)
    parts = functional.split_model(model)
    before = jax.tree.map(np.asarray, parts.frozen)
    tx, schedule = optax.adamw(1e-2), optax.constant_schedule(1e-2)
    state = step_lib.init_state(parts.params, tx, 0)
    # The optimizer state holds exactly the Trainable leaves (twice: Adam's mu and nu).
    opt_leaves = jax.tree.leaves(state["opt_state"])
    param_leaves = jax.tree.leaves(parts.params)
    assert sum(x.size for x in opt_leaves) == 2 * sum(x.size for x in param_leaves) + 1
    clip_state = nnx.state(tiny_clip, nnx.Param)
    assert not jax.tree.leaves(nnx.state(tiny_clip, Trainable))
    assert len(jax.tree.leaves(parts.frozen)) >= len(jax.tree.leaves(clip_state))
    step = jax.jit(step_lib.make_train_step(parts.graphdef, tx, schedule, smoke_config))
    labels = jnp.asarray(np.random.default_rng(0).integers(0, 3, (2, 32, 32)), jnp.int32)
    text = model.text_inputs(VOC[:3], 16)
    new_state, metrics = step(state, parts.frozen, {"image": _images(tiny_clip), "label": labels}, text)
    assert np.isfinite(float(metrics["loss"]))
    assert 0 <= float(metrics["ot_marginal_error"]) < 1e-2  # logged with every step's metrics
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, parts.frozen))
    changed = jax.tree.map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), parts.params, new_state["params"]
    )
    assert all(jax.tree.leaves(changed)), "every Trainable leaf should move after one step"


def test_bad_vocabularies_and_images(smoke_config, tiny_clip):
    model = _model(smoke_config, tiny_clip)
    with pytest.raises(ValueError, match="empty"):
        model.text_inputs([], 16)
    with pytest.raises(ValueError, match="Duplicate"):
        model.text_inputs(["cat", "dog", "Cat"], 16)
    smoke_config.model.max_classes = 4
    with pytest.raises(ValueError, match="max_classes"):
        _model(smoke_config, tiny_clip).text_inputs(VOC, 16)
    with pytest.raises(ValueError, match="context length"):
        model.text_inputs(["a very long class name " * 3], 16)
    with pytest.raises(ValueError, match="patch"):
        model(jnp.zeros((1, 30, 30, 3)), model.text_inputs(VOC[:2], 16))
    smoke_config.model.layers = (5,)
    with pytest.raises(ValueError, match="layers"):
        _model(smoke_config, tiny_clip)


def test_trimmed_token_table_gives_the_same_text_features(smoke_config, tiny_clip):
    """Prompts are padded to the longest one only; with a causal mask this is exact."""
    model = _model(smoke_config, tiny_clip)
    inputs = model.text_inputs(VOC[:4], 16)
    assert inputs["tokens"].shape[1] <= 16
    full = jnp.zeros((4, 16), jnp.int32).at[:, : inputs["tokens"].shape[1]].set(inputs["tokens"])
    np.testing.assert_allclose(
        model.text_features(inputs), model.text_features({**inputs, "tokens": full}), atol=1e-5
    )


def _with(config, **changes):
    config = copy.deepcopy(config)
    for key, value in changes.items():
        config.model[key] = value
    return config


def test_residual_dlfa_starts_as_the_model_without_dlfa(smoke_config, tiny_clip):
    """Zero-initialised residual DLFA: q = norm(t + 0) = t, so step 0 equals alignment=False."""
    images, names = _images(tiny_clip), VOC[:4]
    residual = _model(smoke_config, tiny_clip)
    plain = _model(_with(smoke_config, alignment=False), tiny_clip)
    text = residual.text_features(residual.text_inputs(names, 16))
    np.testing.assert_allclose(
        residual.segment(images, text).logits, plain.segment(images, text).logits, atol=1e-5
    )
    assert all(not np.asarray(a.kernel[...]).any() for a in residual.alignment)
    otseg = _model(_with(smoke_config, alignment_residual=False), tiny_clip)
    assert (
        np.abs(
            np.asarray(otseg.segment(images, text).logits) - np.asarray(plain.segment(images, text).logits)
        ).max()
        > 1e-3
    )


def test_template_contexts_start_as_the_hand_crafted_prompts(smoke_config, tiny_clip):
    """Prompt n starts as `init_templates[n] + name + .`: its feature equals that template's."""
    from zegot_jax.models import prompts

    names = VOC[:3]
    model = _model(smoke_config, tiny_clip)  # smoke: 2 prompts of 4 slots, 4-token templates
    learned = np.asarray(model.text_features(model.text_inputs(names, 16)))
    for n, words in enumerate(smoke_config.model.init_templates[:2]):
        template = np.asarray(
            prompts.template_features(tiny_clip, names, [words + " {}."], context_length=16)
        )[:, 0]
        np.testing.assert_allclose(learned[:, n], template, atol=1e-5)
    assert np.abs(learned[:, 0] - learned[:, 1]).max() > 1e-3  # the prompts start different
    with pytest.raises(ValueError, match="one text per prompt"):
        _model(_with(smoke_config, num_prompts=5), tiny_clip)
    with pytest.raises(ValueError, match="context_tokens"):
        _model(_with(smoke_config, init_templates=("a very good photo of the",) * 2), tiny_clip)
    with pytest.raises(ValueError, match="prompt_init"):
        _model(_with(smoke_config, prompt_init="words"), tiny_clip)


def test_temperature_and_bias_scale_the_refined_score(smoke_config, tiny_clip):
    images, names, n = _images(tiny_clip), VOC[:3], smoke_config.model.num_prompts
    scaled = _model(_with(smoke_config, temperature_init=5.0, bias_init=-2.0), tiny_clip)
    raw = _model(_with(smoke_config, learn_temperature=False), tiny_clip)
    text = scaled.text_features(scaled.text_inputs(names, 16))
    np.testing.assert_allclose(
        scaled.segment(images, text).logits,
        5.0 * raw.segment(images, text).logits / n - 2.0,
        rtol=1e-5,
        atol=1e-5,
    )
    assert float(scaled.score_scale[...]) == pytest.approx(np.log(5.0))


def test_training_free_logits_are_the_template_baseline(smoke_config, tiny_clip):
    """free_logits ranks classes exactly as the training-free model (templates, no DLFA, no OT)."""
    images, names = _images(tiny_clip), VOC[:5]
    model = _model(smoke_config, tiny_clip)
    reference = model.reference_features(names, 16)
    out = model.segment(images, model.text_features(model.text_inputs(names, 16)), reference)
    free_model = _model(ml_config(zegot.training_free_config(smoke_config.model)), tiny_clip)
    free = free_model.segment(images, free_model.text_inputs(names, 16))
    np.testing.assert_array_equal(np.argmax(out.free_logits, 1), np.argmax(free.logits, 1))
    assert not jax.tree.leaves(nnx.state(free_model, Trainable))  # nothing to train


def ml_config(model_section):
    config = common.get_config()
    config.model = model_section
    return config
